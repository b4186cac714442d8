"""Benchmark: the Ray Serve explorer endpoint against vLLM's own OpenAI server, same model, same
engine arguments, same client, in one run. Output tokens/s at each concurrency, the Serve/direct
ratio, and the memory the engine takes next to Ray.

    python jobs/bench_engine.py                 # embedded model, 1/8/32 concurrent
"""

import asyncio
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import psutil

from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.engine import EngineConfig, RayConfig, explorer_endpoint, vllm_server
from ste_ray.loadgen import run_load
from ste_ray.report import format_table


@dataclasses.dataclass
class BenchEngineConfig:
    """Serve endpoint vs vLLM's own server: output tokens/s at several concurrencies."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig, help="The engine under test (mode=start)")
    concurrency: list[int] = option(default_factory=lambda: [1, 8, 32], help="Requests in flight")
    requests_per_worker: int = option(2, help="Requests per concurrent slot at each level (at least 4 in all)")
    max_tokens: int = option(128, help="Output tokens per request (EOS ignored)")
    direct_port: int = option(8100, help="Port of vLLM's own server")
    output: str = option("results/bench_engine.json", help="Where the JSON results go")

    def validate(self) -> None:
        if self.engine.mode != "start":
            fail("engine.mode", "the benchmark starts both engines itself; mode must be 'start'")
        if not self.concurrency or min(self.concurrency) < 1:
            fail("concurrency", "needs one or more positive levels")
        if self.requests_per_worker < 1:
            fail("requests_per_worker", "must be at least 1")


def measure(endpoint, cfg: BenchEngineConfig) -> list[dict]:
    rows = []
    for c in cfg.concurrency:
        rows.append(asyncio.run(run_load(endpoint, c, max(4, c * cfg.requests_per_worker), cfg.max_tokens)))
        print(f"  {c:>3} concurrent: {rows[-1]['output_tokens_per_s']:.1f} output tok/s", flush=True)
    return rows


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = job_config(BenchEngineConfig)
    idle_used = psutil.virtual_memory().used

    print("Ray Serve endpoint (ray.serve.llm) ...", flush=True)
    started = time.perf_counter()
    with explorer_endpoint(cfg.engine, cfg.ray) as endpoint:
        serve_ready_s = time.perf_counter() - started
        serve_rows = measure(endpoint, cfg)
        serve_mem_gib = (psutil.virtual_memory().used - idle_used) / 2**30

    print("vLLM's own OpenAI server ...", flush=True)
    idle_used = psutil.virtual_memory().used
    started = time.perf_counter()
    with vllm_server(cfg.engine, cfg.direct_port, log_path="results/bench_engine.vllm.log") as endpoint:
        direct_ready_s = time.perf_counter() - started
        direct_rows = measure(endpoint, cfg)
        direct_mem_gib = (psutil.virtual_memory().used - idle_used) / 2**30

    levels = []
    for s, d in zip(serve_rows, direct_rows):
        levels.append({
            "concurrency": s["concurrency"],
            "serve": s,
            "direct": d,
            "ratio_serve_over_direct": round(s["output_tokens_per_s"] / d["output_tokens_per_s"], 3),
        })
    result = {
        "benchmark": "engine",
        "machine": {"cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "processor": platform.processor()},
        "config": to_dict(cfg),
        "ready_s": {"serve": round(serve_ready_s, 1), "direct": round(direct_ready_s, 1)},
        "memory_gib_above_idle": {"serve_with_ray": round(serve_mem_gib, 2), "direct": round(direct_mem_gib, 2)},
        "levels": levels,
    }
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(result, indent=2))

    print()
    print(format_table(
        ["concurrency", "serve tok/s", "direct tok/s", "serve/direct", "serve p50 (s)", "direct p50 (s)"],
        [[lv["concurrency"], lv["serve"]["output_tokens_per_s"], lv["direct"]["output_tokens_per_s"],
          lv["ratio_serve_over_direct"], lv["serve"]["latency_p50_s"], lv["direct"]["latency_p50_s"]]
         for lv in levels],
    ))
    print(f"\nready: serve {serve_ready_s:.0f}s (incl. Ray start), direct {direct_ready_s:.0f}s; "
          f"memory above idle: serve+Ray {serve_mem_gib:.1f} GiB, direct {direct_mem_gib:.1f} GiB")
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
