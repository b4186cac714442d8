"""Benchmark: the Ray Serve model endpoint against vLLM's own OpenAI server, same model, same
engine arguments, same client, in one run. Output tokens/s at each concurrency, the Serve/direct
ratio, and the memory the engine takes next to Ray.

    python benchmarks/bench_engine.py                 # embedded model, 1/8/32 concurrent
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
from loadgen import run_load

from ste_ray.client import Endpoint, LLMError
from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.engine import EngineConfig, engine_arguments, engine_env_vars, model_endpoint
from ste_ray.model import resolve_model
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster


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


# ---------------------------------------------------------------------------------------------
# vLLM's own OpenAI server, outside Ray: the reference the Serve endpoint is measured against.


def vllm_server_command(cfg: EngineConfig, port: int) -> list[str]:
    """The `vllm serve` command line with the same engine arguments the Serve endpoint uses."""
    args = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", resolve_model(cfg.model, cfg.cache_dir or None),
        "--served-model-name", cfg.served_model_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--disable-uvicorn-access-log",
    ]
    for key, value in engine_arguments(cfg).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


async def wait_for_server(endpoint: Endpoint, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with endpoint.client(max_retries=0, timeout_s=5) as client:
        while proc.poll() is None:
            try:
                await client.models()
                return
            except LLMError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"vLLM server not ready after {timeout_s:.0f}s") from None
                await asyncio.sleep(1.0)
    raise RuntimeError(f"vLLM server exited with code {proc.returncode} before it was ready")


@contextlib.contextmanager
def vllm_server(cfg: EngineConfig, port: int, log_path: str) -> Iterator[Endpoint]:
    """Run vLLM's own OpenAI server in a subprocess until the block ends."""
    env = {**os.environ, **engine_env_vars(cfg)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(vllm_server_command(cfg, port), env=env, stdout=log, stderr=subprocess.STDOUT)
        endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", cfg.served_model_name)
        try:
            asyncio.run(wait_for_server(endpoint, proc, cfg.ready_timeout_s))
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


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
    with ray_cluster(cfg.ray), model_endpoint(cfg.engine) as endpoint:
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
