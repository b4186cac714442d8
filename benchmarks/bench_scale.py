"""The exploration driver's own cost at ToolBench scale: 10,000 tools × 2 episodes against a loopback
endpoint that answers at once (``instant_endpoint.py``) and tools that return at once. This measures
ste-ray's orchestration (scheduler, actors, writer), not a model: the episodes/s the driver sustains,
its memory, the files written, and the time a resume takes to skip every finished episode. The
comparison: on the first ``--compare_tools`` tools, shards of 1,024 episodes against one file per
episode (the layout before shards), in the same run.

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
    compare_tools: int = option(1000, help="Tools of the shards vs one-file-per-episode comparison", ge=1)
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

    def explore(tools_: list[ToolSpec], settings_: ExploreSettings, out: Path, run_id: str, progress: bool = False) -> dict:
        result = asyncio.run(run_exploration(endpoint, tools_, settings_, tool_cfg, out, run_id, progress=progress))
        return {"episodes": result.episodes_done, "failures": len(result.failures), "wall_s": round(result.elapsed_s, 1),
                "episodes_per_s": round(result.episodes_done / result.elapsed_s, 1),
                "parquet_files": sum(1 for _ in out.rglob("*.parquet"))}

    try:
        with tempfile.TemporaryDirectory() as out, ray_cluster(cfg.ray):
            out = Path(out)
            asyncio.run(ready(endpoint))
            driver = psutil.Process()
            small = specs[:cfg.compare_tools]
            print(f"comparing shards with one file per episode on {len(small)} tools ...", flush=True)
            one_file = explore(small, dataclasses.replace(settings, shard_episodes=1), out / "one-file", "one")
            sharded_small = explore(small, settings, out / "sharded-small", "small")
            print(f"exploring {cfg.tools} tools × {cfg.episodes} episodes ...", flush=True)
            sharded = explore(specs, settings, out / "sharded", "scale", progress=True)
            started = time.perf_counter()
            again = asyncio.run(run_exploration(endpoint, specs, settings, tool_cfg, out / "sharded", "scale2",
                                                progress=False))
            resume_s = time.perf_counter() - started
            rss = driver.memory_info().rss / 2**30
    finally:
        server.terminate()
    results = {"benchmark": "scale", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg), **sharded, "driver_rss_gib": round(rss, 2), "resume_s": round(resume_s, 1),
               "resume_redone": again.episodes_done,
               "comparison": {"tools": len(small), "sharded": sharded_small, "one_file_per_episode": one_file,
                              "sharded_over_one_file": round(sharded_small["episodes_per_s"] / one_file["episodes_per_s"], 2)}}
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    print()
    rows = [[f"{cfg.tools} tools, shards", sharded["episodes"], sharded["failures"], sharded["wall_s"],
             sharded["episodes_per_s"], sharded["parquet_files"]]]
    for name, r in (("shards", sharded_small), ("one file per episode", one_file)):
        rows.append([f"{len(small)} tools, {name}", r["episodes"], r["failures"], r["wall_s"], r["episodes_per_s"],
                     r["parquet_files"]])
    print(format_table(["run", "episodes", "failed", "wall s", "episodes/s", "Parquet files"], rows))
    print(f"shards ÷ one file per episode: {results['comparison']['sharded_over_one_file']}×; driver RSS "
          f"{results['driver_rss_gib']} GiB; a resume that skips all {sharded['episodes']} episodes: "
          f"{results['resume_s']} s ({again.episodes_done} redone)")
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
