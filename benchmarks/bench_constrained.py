"""Benchmark of constrained decoding, on one engine in one run: the same APIs and episodes explored
unconstrained, then constrained (vLLM structured outputs).

Reports the share of well-formed trials (no turn failed to parse) and turns, the share of attempted
calls that executed without error, self-judged success and trials per minute; the goals are
≥ 95 % well-formed trials constrained, at ≥ 0.8 × the unconstrained trials per minute.

    python benchmarks/bench_constrained.py
"""

import asyncio
import dataclasses
import json
import logging
import platform
import tempfile
from pathlib import Path

import psutil

from ste_ray.config import job_config, option, to_dict
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.explore import ExploreSettings, run_exploration
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster
from ste_ray.schema import Trial, read_dir
from ste_ray.tools.calls import ToolCallConfig
from ste_ray.tools.sources import select_tools


@dataclasses.dataclass
class BenchConstrainedConfig:
    """Unconstrained vs constrained exploration of the same APIs and episodes."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig, help="The explorer endpoint")
    explore: ExploreSettings = option(
        default_factory=lambda: ExploreSettings(num_episodes=3, num_stm_slots=2, max_turn=2, episodes_in_flight=3),
        help="Episode settings of both variants (constrained is set per variant)")
    apis: list[str] = option(default_factory=list, help="APIs to explore (default: the ten STE offline APIs)")
    output: str = option("results/bench_constrained.json", help="Where the JSON results go")


def trial_stats(trials: list[dict], wall_s: float) -> dict:
    steps = [s for t in trials for s in t["steps"]]
    judged = [t["success"] for t in trials if t["success"] is not None]
    pct = lambda a, b: round(100 * a / b, 1) if b else 0.0
    return {
        "trials": len(trials), "wall_s": round(wall_s, 1), "trials_per_min": round(60 * len(trials) / wall_s, 2),
        # A trial is well-formed when none of its turns failed to parse (calls and the final answer alike).
        "wellformed_trials_pct": pct(sum(t["num_parse_errors"] == 0 for t in trials), len(trials)),
        "wellformed_turns_pct": pct(sum(s["parse_error"] is None for s in steps), len(steps)),
        "attempted_calls": len(steps),
        # Of every turn that tried a call (parsed or not), the share that executed without error.
        "calls_ok_pct": pct(sum(s["parse_error"] is None and s["tool_error_kind"] is None for s in steps), len(steps)),
        "final_answer_pct": pct(sum(t["final_answer"] is not None for t in trials), len(trials)),
        "self_judged_success_pct": pct(sum(judged), len(judged)),
    }


async def run(endpoint, cfg: BenchConstrainedConfig) -> dict:
    specs, _ = select_tools(["ste"], cfg.apis)
    variants = {}
    for constrained in (False, True):
        name = "constrained" if constrained else "unconstrained"
        print(f"{name}: {len(specs)} APIs × {cfg.explore.num_episodes} episodes ...", flush=True)
        settings = dataclasses.replace(cfg.explore, constrained=constrained)
        with tempfile.TemporaryDirectory() as out:
            result = await run_exploration(endpoint, specs, settings, ToolCallConfig(scope=f"bench-{name}"), Path(out),
                                           f"bench-{name}")
            trials = read_dir(Path(out) / "trials", Trial).to_pylist()
        variants[name] = trial_stats(trials, result.elapsed_s) | {"output_tokens": result.completion_tokens,
                                                                   "failures": len(result.failures)}
    ratio = variants["constrained"]["trials_per_min"] / variants["unconstrained"]["trials_per_min"]
    return {"variants": variants, "trials_per_min_ratio_constrained_over_unconstrained": round(ratio, 3)}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = job_config(BenchConstrainedConfig)
    with ray_cluster(cfg.ray), model_endpoint(cfg.engine) as endpoint:
        results = asyncio.run(run(endpoint, cfg))
    results = {"benchmark": "constrained", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg)} | results
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    columns = ["trials", "wellformed_trials_pct", "wellformed_turns_pct", "calls_ok_pct", "final_answer_pct",
               "self_judged_success_pct", "trials_per_min"]
    rows = [[name, *(v[c] for c in columns)] for name, v in results["variants"].items()]
    print()
    print(format_table(["variant", "trials", "well-formed trials %", "well-formed turns %", "calls ok %",
                        "final answer %", "self-judged success %", "trials/min"], rows))
    print(f"constrained ÷ unconstrained trials/min: {results['trials_per_min_ratio_constrained_over_unconstrained']}")
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
