"""Exploration, the main job. Until the STE episode loop lands (issue 4) it brings the explorer up
exactly as exploration will (embedded vLLM engine in Ray Serve, or an attached/external endpoint),
asks it one chat request through the shared async client, and prints the answer and its cost.

    python jobs/explore.py
    python jobs/explore.py --engine.mode external --engine.url https://host/v1 --engine.model NAME
"""

import asyncio
import dataclasses
import logging
import time

from ste_ray.config import load_config, option
from ste_ray.engine import EngineConfig, RayConfig, explorer_endpoint
from ste_ray.report import format_table


@dataclasses.dataclass
class ExploreConfig:
    """Explore tools with the explorer model (for now: bring the explorer up and query it once)."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig, help="The explorer endpoint")
    prompt: str = option(
        "In one sentence, what is a time zone?", help="The chat request sent to the explorer"
    )
    max_tokens: int = option(64, help="Output token limit of the request")
    temperature: float = option(0.0, help="Sampling temperature of the request")


async def ask(endpoint, cfg: ExploreConfig):
    async with endpoint.client() as client:
        return await client.chat(
            [{"role": "user", "content": cfg.prompt}],
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
        )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(ExploreConfig)
    started = time.perf_counter()
    with explorer_endpoint(cfg.engine, cfg.ray) as endpoint:
        ready_s = time.perf_counter() - started
        result = asyncio.run(ask(endpoint, cfg))
    print(f"\nexplorer {endpoint.model} at {endpoint.base_url}")
    print(f"Q: {cfg.prompt}\nA: {result.text.strip()}\n")
    print(format_table(
        ["engine ready (s)", "request (s)", "prompt tokens", "output tokens", "finish"],
        [[ready_s, result.latency_s, result.usage.get("prompt_tokens", 0),
          result.usage.get("completion_tokens", 0), result.finish_reasons[0]]],
    ))


if __name__ == "__main__":
    main()
