"""Benchmark of exploration, on one engine in one run:

(a) a sequential STE loop, one episode at a time (as the reference implementation runs);
(b) ste-ray (Ray actors, many episodes in flight) at each ``in_flight`` level;
(c) the raw engine at the same concurrency, with prompts and outputs of the same average lengths
    (closed-loop load, no tools, no parsing): the ceiling (b) can approach.

Reports episodes/min and output tokens/s; the goals are (b at the highest level) ÷ (a) ≥ 8 and
(b) ÷ (c) ≥ 0.85.

    python jobs/bench_explore.py
"""

import asyncio
import dataclasses
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import psutil

from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.engine import EngineConfig, RayConfig, explorer_endpoint, init_ray
from ste_ray.explore import EpisodeTask, ExploreSettings, run_episode, run_exploration, select_tools
from ste_ray.loadgen import filler_words_for, run_load
from ste_ray.schema import EPISODE, read_dir
from ste_ray.report import format_table
from ste_ray.tools.calls import ToolBox, ToolCallConfig


@dataclasses.dataclass
class BenchExploreConfig:
    """Sequential STE loop vs ste-ray vs the raw engine."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig, help="The explorer endpoint")
    explore: ExploreSettings = option(
        default_factory=lambda: ExploreSettings(num_stm_slots=1, max_turn=2, turn_max_tokens=96, query_max_tokens=48),
        help="Episode settings shared by every variant")
    in_flight: list[int] = option(default_factory=lambda: [8, 32], help="Episodes in flight for (b) and (c)")
    sequential_episodes: int = option(10, help="Episodes of the sequential loop (a)")
    episodes_per_slot: int = option(4, help="Episodes of (b) per in-flight slot (more: less ramp-down in the measurement)")
    output: str = option("results/bench_explore.json", help="Where the JSON results go")

    def validate(self) -> None:
        if not self.in_flight or min(self.in_flight) < 1:
            fail("in_flight", "needs positive levels")


async def sequential(endpoint, specs, settings, n) -> dict:
    tools = ToolBox(specs, ToolCallConfig(scope="bench-seq"))
    async with endpoint.client(max_concurrency=1) as llm:
        started = time.perf_counter()
        for i in range(n):
            spec = specs[i % len(specs)]
            await run_episode(llm, tools, spec, EpisodeTask("seq", spec.name, i, []), settings)
        wall = time.perf_counter() - started
    tools.shutdown()
    u = llm.usage
    return {"episodes": n, "wall_s": round(wall, 2), "episodes_per_min": round(60 * n / wall, 2),
            "output_tokens_per_s": round(u.completion_tokens / wall, 2),
            "prompt_tokens_per_request": u.prompt_tokens / u.requests,
            "output_tokens_per_request": u.completion_tokens / u.requests}


async def concurrent(endpoint, specs, settings, level, episodes) -> dict:
    per_api = -(-episodes // len(specs))
    run_settings = dataclasses.replace(settings, num_episodes=per_api, episodes_in_flight=level, max_in_flight=level)
    with tempfile.TemporaryDirectory() as out:
        result = await run_exploration(endpoint, specs, run_settings, ToolCallConfig(scope=f"bench-{level}"),
                                       Path(out), f"bench{level}", progress=False)
        busy = sum(read_dir(Path(out) / "episodes", EPISODE).column("latency_s").to_pylist())
    n = result.episodes_done
    return {"in_flight": level, "episodes": n, "wall_s": round(result.elapsed_s, 2),
            # Σ episode time ÷ wall time: how many episodes were really running, on average.
            "mean_episodes_in_flight": round(busy / result.elapsed_s, 2),
            "episodes_per_min": round(60 * n / result.elapsed_s, 2),
            "output_tokens_per_s": round(result.completion_tokens / result.elapsed_s, 2),
            "failures": len(result.failures)}


PROCESS_KINDS = [("ExplorerActor", "explorer actors"), ("ToolCallActor", "tool-call actors"),
                 ("ProxyActor", "Serve proxy"), ("OpenAiIngress", "Serve ingress"), ("LLMServer", "Serve engine replica"),
                 ("VLLM", "vLLM engine"), ("bench_explore", "driver")]


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each kind of process alive on this machine (Ray names its
    workers' process titles after the actor class, vLLM its engine processes). Processes that end
    during a run (the exploration actors) are not in it."""
    totals: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        title = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
        kind = next((label for key, label in PROCESS_KINDS if key in title), "other")
        times = proc.info["cpu_times"]
        if times:
            totals[kind] = totals.get(kind, 0.0) + times.user + times.system
    return totals


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0) - before.get(k, 0), 1) for k in sorted(after) if after.get(k, 0) - before.get(k, 0) > 0.05}


async def run(endpoint, cfg: BenchExploreConfig) -> dict:
    specs = select_tools(["ste"], [])
    print("(a) sequential STE loop ...", flush=True)
    seq = await sequential(endpoint, specs, cfg.explore, cfg.sequential_episodes)
    rows = []
    for level in cfg.in_flight:
        print(f"(b) ste-ray, {level} episodes in flight ...", flush=True)
        before = cpu_seconds()
        ours = await concurrent(endpoint, specs, cfg.explore, level, level * cfg.episodes_per_slot)
        ours["cpu_seconds_by_process"] = cpu_used(before, cpu_seconds())
        print(f"(c) raw engine, {level} requests in flight ...", flush=True)
        filler = await filler_words_for(endpoint, seq["prompt_tokens_per_request"])
        before = cpu_seconds()
        raw = await run_load(endpoint, level, level * 4, max(1, round(seq["output_tokens_per_request"])),
                             filler_words=filler)
        raw["cpu_seconds_by_process"] = cpu_used(before, cpu_seconds())
        rows.append({"in_flight": level, "ste_ray": ours, "raw_engine": raw,
                     "speedup_over_sequential": round(ours["episodes_per_min"] / seq["episodes_per_min"], 2),
                     "tokens_ratio_ste_ray_over_raw": round(ours["output_tokens_per_s"] / raw["output_tokens_per_s"], 3)})
    return {"sequential": seq, "levels": rows}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = job_config(BenchExploreConfig)
    init_ray(cfg.ray)
    with explorer_endpoint(cfg.engine, cfg.ray) as endpoint:
        results = asyncio.run(run(endpoint, cfg))
    results = {"benchmark": "explore", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg)} | results
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    seq = results["sequential"]
    table = [["(a) sequential", 1, seq["episodes"], seq["episodes_per_min"], seq["output_tokens_per_s"], "", "", ""]]
    for r in results["levels"]:
        table.append(["(b) ste-ray", r["in_flight"], r["ste_ray"]["episodes"], r["ste_ray"]["episodes_per_min"],
                      r["ste_ray"]["output_tokens_per_s"], r["speedup_over_sequential"],
                      r["tokens_ratio_ste_ray_over_raw"], r["ste_ray"]["mean_episodes_in_flight"]])
        table.append(["(c) raw engine", r["in_flight"], r["raw_engine"]["requests"], "",
                      r["raw_engine"]["output_tokens_per_s"], "", "", r["in_flight"]])
    print()
    print(format_table(["variant", "in flight", "episodes/requests", "episodes/min", "output tok/s",
                        "÷ (a) episodes/min", "(b) ÷ (c) tok/s", "mean in flight"], table))
    for r in results["levels"]:
        for name in ("ste_ray", "raw_engine"):
            wall = r[name]["wall_s"]
            usage = ", ".join(f"{k} {v / wall:.2f}" for k, v in r[name]["cpu_seconds_by_process"].items())
            print(f"cores busy during {name} at {r['in_flight']} in flight: {usage}")
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
