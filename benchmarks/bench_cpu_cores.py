"""Benchmark of the CPU engine's cores, in one run: vLLM's default, which keeps one core of the node
for its scheduler process (VLLM_CPU_NUM_OF_RESERVED_CPU=1), against computing on every core (0,
ste-ray's default), for the embedded model and the teacher, on two loads: decoding (short prompts,
128 output tokens each) and prefilling (evaluation's tool-mode prompts with five retrieved tool
descriptions, 24 output tokens each). Same engine arguments, same client, same requests.

    python benchmarks/bench_cpu_cores.py                      # embedded model and teacher
    python benchmarks/bench_cpu_cores.py --models embedded
"""

import asyncio
import dataclasses
import json
import os
import platform
import time
import uuid
from pathlib import Path

from loadgen import run_load

from ste_ray.benchmark import Benchmark
from ste_ray.config import job_config, option
from ste_ray.embeddings import Retriever
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.react import tool_mode_messages
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster


@dataclasses.dataclass
class BenchCpuCoresConfig:
    """Reserved scheduler core (vLLM's default) vs every core computing."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    models: list[str] = option(default_factory=lambda: ["embedded", "teacher"], help="Models to measure")
    reserved: list[int] = option(default_factory=lambda: [1, 0], help="VLLM_CPU_NUM_OF_RESERVED_CPU values compared")
    decode_concurrency: int = option(16, help="Requests in flight while decoding")
    decode_requests: int = option(32, help="Decoding requests (128 output tokens each)")
    prefill_concurrency: int = option(8, help="Requests in flight while prefilling")
    prefill_requests: int = option(16, help="Tool-mode prompts (benchmark queries with their top-5 tools)")
    output: str = option("results/bench_cpu_cores.json", help="Where the JSON results go")


def tool_prompts(count: int) -> list[list[dict]]:
    """Evaluation's prompts: benchmark queries, each with its five nearest tool descriptions."""
    benchmark = Benchmark.load()
    items = [item for api in benchmark.apis for item in benchmark.tests[api]][::750 // count][:count]
    retriever = Retriever()
    nearest = Retriever.nearest_names(retriever.embed([i["query"] for i in items]),
                                      retriever.embed([benchmark.block(a) for a in benchmark.apis]), benchmark.apis, 5)
    return [tool_mode_messages([(a, benchmark.descriptions[a]) for a in apis], i["query"]) for i, apis in zip(items, nearest)]


async def prefill_load(endpoint, prompts: list[list[dict]], concurrency: int) -> dict:
    salt = uuid.uuid4().hex  # nothing reused from an earlier run's prefix cache
    async with endpoint.client(max_concurrency=concurrency, max_retries=0) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client.chat(p, max_tokens=24, temperature=0.0, extra_body={"ignore_eos": True,
                                                                                            "cache_salt": salt})
                               for p in prompts))
        wall = time.perf_counter() - started
    tokens = client.usage.prompt_tokens + client.usage.completion_tokens
    return {"requests": len(prompts), "prompt_tokens": client.usage.prompt_tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1)}


def main() -> None:
    cfg = job_config(BenchCpuCoresConfig)
    prompts = tool_prompts(cfg.prefill_requests)
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "runs": {}}
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with ray_cluster(cfg.ray):
        for model in cfg.models:
            for reserved in cfg.reserved:
                engine = EngineConfig(model=model, max_model_len=4096, cpu_reserved_cores=reserved,
                                      cpu_kv_cache_gib=3.0 if model == "teacher" else 2.0)
                started = time.perf_counter()
                with model_endpoint(engine) as endpoint:
                    ready_s = time.perf_counter() - started
                    decode = asyncio.run(run_load(endpoint, cfg.decode_concurrency, cfg.decode_requests, 128))
                    prefill = asyncio.run(prefill_load(endpoint, prompts, cfg.prefill_concurrency))
                results["runs"][f"{model} reserved={reserved}"] = {"ready_s": round(ready_s, 1), "decode": decode,
                                                                   "prefill": prefill}
                output.write_text(json.dumps(results, indent=1))
    rows = []
    for model in cfg.models:
        runs = [results["runs"][f"{model} reserved={r}"] for r in cfg.reserved]
        base = runs[0]
        for reserved, run in zip(cfg.reserved, runs):
            rows.append([model, reserved, run["ready_s"], run["decode"]["output_tokens_per_s"],
                         f"{run['decode']['output_tokens_per_s'] / base['decode']['output_tokens_per_s']:.2f}",
                         run["prefill"]["tokens_per_s"],
                         f"{run['prefill']['tokens_per_s'] / base['prefill']['tokens_per_s']:.2f}"])
    print(format_table(["model", "reserved cores", "ready s", "decode out tok/s", "ratio", "prefill tok/s", "ratio"], rows))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
