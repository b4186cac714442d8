"""The STE benchmark (from the STE repository, MIT licence, shipped with the package): 50 APIs
with their descriptions, 15 test queries each with the ground-truth call, the APIs whose arguments
are checked by string match, the continual-learning batches, and each API's neighbours. Evaluation runs on it; exploit
keeps its test queries out of the training data."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ste_ray.react import ste_block


def benchmark_dir() -> Path:
    return Path(str(resources.files("ste_ray") / "data" / "ste_benchmark"))


@dataclasses.dataclass
class Benchmark:
    apis: list[str]  # the 50 APIs, in API_list.json order
    descriptions: dict[str, str]  # API name -> its description text as the benchmark shows it
    tests: dict[str, list[dict[str, Any]]]  # API name -> items with query, action, action_input
    string_match: set[str]  # APIs whose arguments are checked by string match

    @classmethod
    def load(cls, directory: str | Path = "") -> Benchmark:
        d = Path(directory) if directory else benchmark_dir()
        read = lambda name: json.loads((d / name).read_text(encoding="utf-8"))
        return cls(apis=read("API_list.json"), descriptions=read("API_descriptions.json"),
                   tests=read("tool_test.json"), string_match=set(read("string_match_apis.json")))

    def block(self, api: str) -> str:
        """An API as the prompt shows it (the benchmark's own layout)."""
        return ste_block(api, self.descriptions[api])

    def test_queries(self) -> list[str]:
        return [item["query"] for items in self.tests.values() for item in items]

    def neighbours(self) -> dict[str, list[str]]:
        """Per API, the benchmark's own list of similar APIs (api2neighbors.json; it includes the API)."""
        return json.loads((benchmark_dir() / "api2neighbors.json").read_text(encoding="utf-8"))


def continual_learning_batches() -> list[list[str]]:
    """The benchmark's own continual-learning batches (CL_batches.json): lists of API names."""
    return json.loads((benchmark_dir() / "CL_batches.json").read_text(encoding="utf-8"))
