"""The exploration driver's own cost at ToolBench scale: 10,000 tools × 2 episodes against a loopback
endpoint that answers at once (``instant_endpoint.py``) and tools that return at once. This measures
ste-ray's orchestration (scheduler, actors, writer), not a model: the episodes/s the driver sustains,
its memory, the files written, and the time a resume takes to skip every finished episode.

    python benchmarks/bench_scale.py --tools 10000
"""

import asyncio
import dataclasses
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from ste_ray.client import Endpoint
from ste_ray.config import job_config, option, to_dict
from ste_ray.explore import ExploreSettings, run_exploration
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster
from ste_ray.tools.calls import ToolCallConfig, ToolLimits
from ste_ray.tools.spec import Executor, ToolSpec


@dataclasses.dataclass
class BenchScaleConfig:
    """ste-ray's orchestration at scale, against an instant endpoint and instant tools."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    tools: int = option(10_000, help="Tools to explore", ge=1)
    episodes: int = option(2, help="Episodes per tool", ge=1)
    in_flight: int = option(512, help="Episodes in flight across all tools", ge=1)
    actors: int = option(4, help="Exploration actors", ge=1)
    output: str = option("results/bench_scale.json", help="Where the JSON results go")


def instant(**_: object) -> dict:
    return {"ok": True}


def tools(n: int) -> list[ToolSpec]:
    return [ToolSpec(name=f"tool_{i:05d}", description=f"Tool number {i}.", parameters={"type": "object", "properties": {}},
                     executor=Executor(kind="python", function=instant)) for i in range(n)]


async def ready(endpoint: Endpoint) -> None:
    """Wait for the endpoint process to answer (the client's retries back off while it starts)."""
    async with endpoint.client(max_retries=10) as client:
        await client.models()


def main() -> None:
    cfg = job_config(BenchScaleConfig)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("instant_endpoint.py")), str(port)])
    specs = tools(cfg.tools)
    settings = ExploreSettings(num_episodes=cfg.episodes, num_stm_slots=1, max_turn=1, episodes_in_flight=cfg.episodes,
                               max_in_flight=cfg.in_flight, num_actors=cfg.actors, constrained=False,
                               shard_episodes=1024)
    tool_cfg = ToolCallConfig(limits=ToolLimits(rate_per_s=1e6, burst=10**6, max_concurrency=1024), scope="bench-scale")
    endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", "instant")
    try:
        with tempfile.TemporaryDirectory() as out, ray_cluster(cfg.ray):
            asyncio.run(ready(endpoint))
            driver = psutil.Process()
            print(f"exploring {cfg.tools} tools × {cfg.episodes} episodes ...", flush=True)
            result = asyncio.run(run_exploration(endpoint, specs, settings, tool_cfg, Path(out), "scale"))
            files = sum(1 for _ in Path(out).rglob("*.parquet"))
            started = time.perf_counter()
            again = asyncio.run(run_exploration(endpoint, specs, settings, tool_cfg, Path(out), "scale2", progress=False))
            resume_s = time.perf_counter() - started
            rss = driver.memory_info().rss / 2**30
    finally:
        server.terminate()
    episodes = result.episodes_done
    results = {"benchmark": "scale", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg), "episodes": episodes, "failures": len(result.failures),
               "wall_s": round(result.elapsed_s, 1), "episodes_per_s": round(episodes / result.elapsed_s, 1),
               "driver_rss_gib": round(rss, 2), "parquet_files": files, "resume_s": round(resume_s, 1),
               "resume_redone": again.episodes_done}
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    print()
    print(format_table(["episodes", "failed", "wall s", "episodes/s", "driver RSS GiB", "Parquet files", "resume s"],
                       [[episodes, len(result.failures), results["wall_s"], results["episodes_per_s"],
                         results["driver_rss_gib"], files, results["resume_s"]]]))
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
