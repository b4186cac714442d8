"""Benchmark of retrieval's top-k, in one run: ``Retriever.top_k`` (a tensor top-k, ties in index
order) against the sort in Python it replaced, on the same similarity matrix: the benchmark's 750
test queries against a catalogue of 50 (the benchmark's own APIs) and of 10,000 tools. The results
must be identical; the table gives the time of each and the ratio.

    python benchmarks/bench_retrieval.py
"""

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from ste_ray.benchmark import Benchmark
from ste_ray.config import job_config, option
from ste_ray.embeddings import Retriever
from ste_ray.report import format_table


@dataclasses.dataclass
class BenchRetrievalConfig:
    """Retrieval's top-k at catalogue sizes, against the sort in Python it replaced."""

    sizes: list[int] = option(default_factory=lambda: [50, 10_000], help="Catalogue sizes (tools)")
    k: int = option(5, help="Tools retrieved per query (evaluation's top5)", ge=1)
    repeats: int = option(3, help="Timed repetitions of each method (the best is kept)", ge=1)
    output: str = option("results/bench_retrieval.json", help="Where the JSON results go")


def python_top_k(queries, keys, k: int) -> list[list[int]]:
    """The replaced implementation: every row sorted in Python (stable, so ties in index order)."""
    result = []
    for row in (queries @ keys.T).tolist():
        result.append(sorted(range(len(row)), key=lambda j: -row[j])[:k])
    return result


def catalogue(size: int, benchmark: Benchmark) -> list[str]:
    """``size`` tool descriptions: the benchmark's 50, then the same descriptions again under new
    names (``copy3_add_date``), as a large catalogue of similar tools would hold them."""
    blocks = [benchmark.block(a) for a in benchmark.apis]
    texts = list(blocks)
    while len(texts) < size:
        i = len(texts)
        texts.append(blocks[i % len(blocks)].replace("API_name: ", f"API_name: copy{i // len(blocks)}_", 1))
    return texts[:size]


def best_time(fn, repeats: int) -> tuple[float, list]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    cfg = job_config(BenchRetrievalConfig)
    benchmark = Benchmark.load()
    retriever = Retriever()
    queries = retriever.embed(benchmark.test_queries())
    rows, results = [], {}
    for size in cfg.sizes:
        keys = retriever.embed(catalogue(size, benchmark))
        old_s, old = best_time(lambda: python_top_k(queries, keys, cfg.k), cfg.repeats)
        new_s, new = best_time(lambda: Retriever.top_k(queries, keys, cfg.k), cfg.repeats)
        assert new == old, "tensor top-k and the Python sort disagree"
        results[size] = {"queries": len(queries), "k": cfg.k, "python_sort_s": round(old_s, 4),
                         "tensor_top_k_s": round(new_s, 4), "speedup": round(old_s / new_s, 1), "identical": True}
        rows.append([size, len(queries), f"{old_s:.3f}", f"{new_s:.3f}", f"{old_s / new_s:.1f}x", "yes"])
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
                                  "torch": torch.__version__, "results": results}, indent=1))
    print(format_table(["tools", "queries", "python sort s", "tensor top-k s", "speed-up", "identical"], rows))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
