"""Benchmark of the tool-call path, in one run:

1. rate-limit accuracy: for several configured rates, many concurrent callers hammer one tool for
   ``duration_s``; achieved ÷ configured requests/s (after the initial burst), and the most calls
   seen in any one-second window against the ceiling rate + burst;
2. per-call overhead: the same HTTP tool called sequentially straight over aiohttp and through the
   tool-call actor (p50, p99), both against the built-in tool server on loopback.

    python benchmarks/bench_tools.py
"""

import asyncio
import bisect
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import aiohttp
import psutil

from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.runtime import RayConfig, init_ray
from ste_ray.report import format_table
from ste_ray.tools.builtin import builtin_by_name, builtin_tools
from ste_ray.tools.calls import ToolBox, ToolCallConfig, ToolLimits
from ste_ray.tools.loaders import load_openapi
from ste_ray.tools.server import start_server, tool_path


@dataclasses.dataclass
class BenchToolsConfig:
    """Rate-limit accuracy and per-call overhead of the tool-call actors."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    rates: list[float] = option(default_factory=lambda: [5.0, 20.0, 50.0], help="Configured requests/s to test")
    burst: int = option(5, help="Token-bucket burst for the rate tests")
    duration_s: float = option(20.0, help="How long each rate is driven")
    callers: int = option(64, help="Concurrent callers driving each rate")
    overhead_calls: int = option(300, help="Sequential calls per path for the overhead test")
    output: str = option("results/bench_tools.json", help="Where the JSON results go")

    def validate(self) -> None:
        if not self.rates or min(self.rates) <= 0:
            fail("rates", "needs positive rates")
        if self.duration_s < 1:
            fail("duration_s", "must be at least 1")


async def drive_rate(rate: float, cfg: BenchToolsConfig) -> dict:
    limits = ToolLimits(rate_per_s=rate, burst=cfg.burst, max_concurrency=cfg.callers)
    box = ToolBox([builtin_by_name()["add_date"]], ToolCallConfig(limits=limits, scope=f"bench-rate-{rate:g}"))
    done: list[float] = []
    started = time.perf_counter()
    deadline = started + cfg.duration_s

    async def caller(i: int) -> None:
        while time.perf_counter() < deadline:
            observation = await box.call("add_date", {"date": "2024-01-01", "days": i})
            assert observation.ok, observation.text
            done.append(time.perf_counter() - started)

    await asyncio.gather(*(caller(i) for i in range(cfg.callers)))
    box.shutdown()
    done.sort()
    # Steady state: calls after the initial burst, over the time they took.
    steady = (len(done) - cfg.burst) / done[-1]
    busiest = max(bisect.bisect_left(done, t + 1.0) - i for i, t in enumerate(done))
    return {"configured_rps": rate, "calls": len(done), "achieved_rps": round(steady, 3),
            "achieved_over_configured": round(steady / rate, 4), "max_calls_in_1s": busiest,
            "ceiling_in_1s": rate + cfg.burst}


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 3)}


async def overhead(cfg: BenchToolsConfig) -> dict:
    runner, url = await start_server(list(builtin_tools()))
    args = {"date": "2024-01-01", "days": 30}
    try:
        direct = []
        async with aiohttp.ClientSession() as http:
            for _ in range(cfg.overhead_calls):
                t = time.perf_counter()
                async with http.post(url + tool_path("add_date"), json=args) as resp:
                    await resp.json()
                direct.append(time.perf_counter() - t)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/openapi.json") as resp:
                specs = load_openapi(await resp.json())
        limits = ToolLimits(rate_per_s=1e6, burst=10**6)
        box = ToolBox([s for s in specs if s.name == "add_date"], ToolCallConfig(limits=limits, scope="bench-overhead"))
        await box.call("add_date", args)  # creates the actor and its HTTP session
        via_actor = []
        for _ in range(cfg.overhead_calls):
            t = time.perf_counter()
            observation = await box.call("add_date", args)
            via_actor.append(time.perf_counter() - t)
            assert observation.ok, observation.text
        box.shutdown()
    finally:
        await runner.cleanup()
    d, a = percentiles(direct), percentiles(via_actor)
    return {"direct_aiohttp": d, "tool_actor": a,
            "overhead_p50_ms": round(a["p50_ms"] - d["p50_ms"], 3), "overhead_p99_ms": round(a["p99_ms"] - d["p99_ms"], 3)}


async def run(cfg: BenchToolsConfig) -> dict:
    rate_rows = []
    for rate in cfg.rates:
        print(f"driving {rate:g} requests/s for {cfg.duration_s:g}s ...", flush=True)
        rate_rows.append(await drive_rate(rate, cfg))
    print("per-call overhead ...", flush=True)
    return {"rates": rate_rows, "overhead": await overhead(cfg)}


def main() -> None:
    cfg = job_config(BenchToolsConfig)
    init_ray(dataclasses.replace(cfg.ray, include_dashboard=False))
    results = asyncio.run(run(cfg))
    results = {"benchmark": "tools", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg)} | results
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    print()
    print(format_table(["configured rps", "achieved rps", "achieved/configured", "calls", "max in 1 s", "ceiling"],
                       [[r["configured_rps"], r["achieved_rps"], r["achieved_over_configured"], r["calls"],
                         r["max_calls_in_1s"], r["ceiling_in_1s"]] for r in results["rates"]]))
    o = results["overhead"]
    print()
    print(format_table(["path", "p50 (ms)", "p99 (ms)"],
                       [["direct aiohttp", o["direct_aiohttp"]["p50_ms"], o["direct_aiohttp"]["p99_ms"]],
                        ["tool-call actor", o["tool_actor"]["p50_ms"], o["tool_actor"]["p99_ms"]]]))
    print(f"\noverhead of the actor path: p50 +{o['overhead_p50_ms']:.2f} ms, p99 +{o['overhead_p99_ms']:.2f} ms")
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
