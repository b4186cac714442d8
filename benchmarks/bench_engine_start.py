"""Benchmark of an engine start on Ray Serve LLM, in one run on one Ray instance, alternating: with
Serve LLM's node initialization (its default: a task on the replica's node that downloads the model,
for a local directory a new worker process that only imports torch and transformers) ÷ without it
(what ste-ray does for a model in a local directory: ``ste_ray.serve.callbacks.LocalModel``). Each
start is timed from the deploy call until the application runs, then one chat request must be
answered, and the application is removed before the next.

    python benchmarks/bench_engine_start.py --repeats 3
"""

import asyncio
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import psutil

import ste_ray.engine
from ste_ray.config import job_config, option, to_dict
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster

NODE_INIT = {"with node initialization (Serve LLM's default)": False, "without (ste-ray, local model)": True}


@dataclasses.dataclass
class BenchEngineStartConfig:
    """Engine start time with and without Ray Serve LLM's node initialization."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=lambda: EngineConfig(max_model_len=2048, cpu_kv_cache_gib=1.0),
                                  help="The engine started (mode=start; a model in a local directory)")
    repeats: int = option(3, help="Starts of each kind, alternating", ge=1)
    output: str = option("results/bench_engine_start.json", help="Where the JSON results go")


async def answer(endpoint) -> str:
    async with endpoint.client() as client:
        result = await client.chat([{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    return result.texts[0]


def start_once(cfg: EngineConfig) -> float:
    started = time.perf_counter()
    with model_endpoint(cfg) as endpoint:
        ready_s = time.perf_counter() - started
        if not asyncio.run(answer(endpoint)).strip():
            raise RuntimeError("the started engine gave an empty answer")
    return ready_s


def main() -> None:
    cfg = job_config(BenchEngineStartConfig)
    if cfg.engine.mode != "start":
        raise SystemExit("error: engine.mode: the benchmark starts engines (mode start)")
    seconds: dict[str, list[float]] = {name: [] for name in NODE_INIT}
    with ray_cluster(cfg.ray):
        for i in range(cfg.repeats):
            # Alternating, and each kind first in every other round, so neither always starts second.
            order = list(NODE_INIT.items()) if i % 2 == 0 else list(reversed(NODE_INIT.items()))
            for name, skip in order:
                ste_ray.engine.SKIP_LOCAL_NODE_INIT = skip
                seconds[name].append(round(start_once(cfg.engine), 1))
                print(f"round {i + 1}: {name}: {seconds[name][-1]} s", flush=True)
    ste_ray.engine.SKIP_LOCAL_NODE_INIT = True
    (with_init, without_init) = NODE_INIT
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    results = {"benchmark": "engine_start", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg), "seconds": seconds, "medians": medians,
               "with_over_without": round(medians[with_init] / medians[without_init], 2),
               "saved_s": round(medians[with_init] - medians[without_init], 1)}
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    print(format_table(["engine start", "runs (s)", "median s"],
                       [[name, " / ".join(map(str, values)), medians[name]] for name, values in seconds.items()]))
    print(f"with ÷ without: {results['with_over_without']} (saves {results['saved_s']} s per start); "
          f"results: {cfg.output}")


if __name__ == "__main__":
    main()
