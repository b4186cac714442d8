"""Benchmark of evaluation, in one run: the model on the STE benchmark in each setting (wall time
and the paper's metrics), then the speed-up from prefix caching on the all-descriptions prompt,
measured on the same queries with the engine started again without it.

    python benchmarks/bench_evaluate.py                     # the embedded model, all 750 queries
"""

import asyncio
import dataclasses
import json
import logging
import platform
from pathlib import Path

import psutil

from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.benchmark import Benchmark
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.evaluate import METRICS_HEADERS, EvalSettings, metrics_table_rows, run_benchmark
from ste_ray.model import resolve_model
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster


@dataclasses.dataclass
class BenchEvaluateConfig:
    """The STE benchmark in several settings, and prefix caching on vs off."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=lambda: EngineConfig(max_model_len=8192),
                                  help="The model under evaluation (started twice: prefix caching on, then off)")
    eval: EvalSettings = option(default_factory=lambda: EvalSettings(settings=["all", "top5", "top5+demos4"]),
                                help="Settings run on every query")
    cache_queries: int = option(16, help="Queries of the prefix-caching comparison (one from each of the first APIs)")
    cache_in_flight: int = option(
        8, help="Requests in flight in the comparison: without caching, each 'all' prompt holds ~7,600 tokens of "
        "KV cache, and more than fit make vLLM preempt and recompute them")
    output: str = option("results/bench_evaluate.json", help="Where the JSON results go (written after each phase)")

    def validate(self) -> None:
        if self.engine.mode != "start":
            fail("engine.mode", "the benchmark starts the engine itself (twice), so it must be 'start'")
        if not 1 <= self.cache_queries <= 50:
            fail("cache_queries", "must be between 1 and 50 (one query from each API)")
        if self.cache_in_flight < 1:
            fail("cache_in_flight", "must be at least 1")


def summary(results) -> dict:
    return {r.setting: {**r.scored.metrics, "wall_s": round(r.elapsed_s, 1), "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens, "prompts_cut": r.prompts_cut,
                        "queries_per_s": round(r.scored.metrics["n"] / r.elapsed_s, 2)} for r in results}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = job_config(BenchEvaluateConfig)
    model_dir = resolve_model(cfg.engine.model, cfg.engine.cache_dir or None)
    tokenizer = model_dir if Path(model_dir).is_dir() else None
    comparison = dataclasses.replace(cfg.eval, settings=["all"], limit=1, max_in_flight=cfg.cache_in_flight,
                                     apis=list(Benchmark.load(cfg.eval.benchmark_dir).apis[:cfg.cache_queries]))
    results = {"benchmark": "evaluate", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg), "judge": "none (string match for every API)"}
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with ray_cluster(cfg.ray), model_endpoint(cfg.engine) as endpoint:
        print(f"settings {', '.join(cfg.eval.settings)} on {cfg.eval.limit or 'all'} queries per API ...", flush=True)
        runs = asyncio.run(run_benchmark(endpoint, cfg.eval, cfg.engine.max_model_len, tokenizer, "none"))
        results["settings"] = summary(runs)
        out.write_text(json.dumps(results, indent=2))
        print("prefix caching on: 'all' on the comparison queries ...", flush=True)
        cached = asyncio.run(run_benchmark(endpoint, comparison, cfg.engine.max_model_len, tokenizer, "none"))[0]
        no_cache = dataclasses.replace(cfg.engine, enable_prefix_caching=False)
        with model_endpoint(no_cache) as endpoint:
            print("prefix caching off: 'all' on the comparison queries ...", flush=True)
            uncached = asyncio.run(run_benchmark(endpoint, comparison, cfg.engine.max_model_len, tokenizer, "none"))[0]
    results["prefix_caching"] = {
        "queries": cached.scored.metrics["n"], "in_flight": cfg.cache_in_flight,
        "on": summary([cached])["all"], "off": summary([uncached])["all"],
        "speedup": round(uncached.elapsed_s / cached.elapsed_s, 2),
        "same_outputs": sum(a["model_output"] == b["model_output"] for api in cached.predictions
                            for a, b in zip(cached.predictions[api], uncached.predictions[api]))}
    out.write_text(json.dumps(results, indent=2))
    print()
    print(format_table([*METRICS_HEADERS, "queries/s"],
                       [row + [round(r.scored.metrics["n"] / r.elapsed_s, 2)] for row, r in zip(metrics_table_rows(runs), runs)]))
    pc = results["prefix_caching"]
    print(f"\nprefix caching, 'all' setting, {pc['queries']} queries, {pc['in_flight']} in flight: {pc['on']['wall_s']}s on, "
          f"{pc['off']['wall_s']}s off → {pc['speedup']}× (identical outputs: {pc['same_outputs']}/{pc['queries']})")
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
