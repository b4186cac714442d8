"""Benchmark of the training stage, in one run on the same data, model, sequence lengths and steps:

  (a) a plain single-process PyTorch loop (the same LoRA model, collation, bf16 autocast where the CPU has bf16 kernels, AdamW);
  (b) Ray Train with 1 worker (ste-ray's recipe: Ray Data shard, per-step report), given every core
      as (a) has them: Ray sets a worker's OMP_NUM_THREADS to its CPU slots, 1 by default;
  (c) Ray Train with 2 workers of 1 CPU slot each, the default (DDP over gloo);
  and the peak memory of one worker for LoRA and for full fine-tuning.

Tokens/s is the mean over the steps after the first (the warm-up). Goals: (b) ÷ (a) ≥ 0.95.

    python benchmarks/bench_train.py
"""

import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import torch

from ste_ray.benchmark import Benchmark
from ste_ray.config import job_config, option, to_dict
from ste_ray.exploit.sft import FormatExamples, catalogue, distractors
from ste_ray.model import cpu_dtype, resolve_model
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster
from ste_ray.schema import SFTExample, write_records
from ste_ray.tools.builtin import ste_offline_apis
from ste_ray.tools.sources import ste_api_descriptions_path
from ste_ray.train import TrainSettings, run_training
from ste_ray.train.data import pad_batch, tokenize_chat
from ste_ray.train.recipe import peak_memory_gib


@dataclasses.dataclass
class BenchTrainConfig:
    """A plain PyTorch loop vs Ray Train with 1 and 2 workers; LoRA vs full memory."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    examples: int = option(48, help="Training examples (tool-mode prompts with five tools, as exploit writes them)", ge=8)
    steps: int = option(6, help="Optimizer steps of each variant", ge=2)
    batch_size: int = option(1, help="Examples per worker per forward pass (the training default)", ge=1)
    effective_batch_size: int = option(4, help="Examples per optimizer step (the same in every variant)", ge=1)
    output: str = option("results/bench_train.json", help="Where the JSON results go")


def sft_data(directory: Path, count: int) -> list[SFTExample]:
    """Tool-mode examples with five tools in the prompt, as exploit writes them: for a throughput
    measurement, the benchmark's own queries and calls for its offline APIs give real lengths."""
    specs = ste_offline_apis(ste_api_descriptions_path())
    benchmark = Benchmark.load()
    tools = catalogue(specs, benchmark)
    shown = distractors([s.name for s in specs], tools, 4, benchmark, "")
    formatter = FormatExamples(tools, shown, toolkens=False, add_tool_response=False, seed=0)
    items = [(s.name, item) for s in specs for item in benchmark.tests[s.name]]
    examples = [SFTExample(**formatter.example({
        "example_id": f"{i}", "api": api, "seed_key": f"{i}", "query": item["query"], "paraphrase": False,
        "action_input": item["action_input"], "observation": "", "final_answer": "", "split": "train"}, shown[api]))
        for i, (api, item) in ((i, items[i % len(items)]) for i in range(count))]
    write_records(directory / "train" / "part-0.parquet", examples, SFTExample)
    write_records(directory / "validation" / "part-0.parquet", examples[:2], SFTExample)
    return examples


def plain_loop(examples: list[SFTExample], settings: TrainSettings, steps: int) -> dict:
    """(a): one process, no Ray; the recipe's model, collation and optimizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve_model(settings.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(settings.seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), LoraConfig(
        r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target_modules, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.peak_learning_rate)
    tokenized = [tokenize_chat(tokenizer, json.loads(e.messages)) for e in examples]
    accumulation = settings.effective_batch_size // settings.batch_size
    rates, index = [], 0
    for _ in range(steps):
        started, tokens = time.perf_counter(), 0
        for _ in range(accumulation):
            rows = [tokenized[(index + k) % len(tokenized)] for k in range(settings.batch_size)]
            index += settings.batch_size
            batch = pad_batch({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]}, tokenizer.pad_token_id)
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=cpu_dtype() == "bfloat16"):
                loss = model(**batch).loss
            (loss / accumulation).backward()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(tokens / (time.perf_counter() - started))
    return {"tokens_per_s": round(statistics.mean(rates[1:]), 1), "per_step": [round(r, 1) for r in rates],
            "peak_memory_gib": round(peak_memory_gib(), 2)}


def ray_train(sft: Path, settings: TrainSettings, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as output:
        result = run_training(sft, Path(output), dataclasses.replace(settings, max_steps=steps), progress=False)
    rates = [h["tokens_per_s"] for h in result.history]
    return {"tokens_per_s": round(statistics.mean(rates[1:]), 1), "per_step": [round(r, 1) for r in rates],
            "peak_memory_gib": round(max(h["peak_memory_gib"] for h in result.history), 2),
            "wall_s": round(result.elapsed_s, 1)}


def main() -> None:
    cfg = job_config(BenchTrainConfig)
    with tempfile.TemporaryDirectory() as tmp, ray_cluster(cfg.ray):
        sft = Path(tmp) / "sft"
        examples = sft_data(sft, cfg.examples)
        base = TrainSettings(batch_size=cfg.batch_size, effective_batch_size=cfg.effective_batch_size, epochs=50,
                             checkpoint_every=10_000)
        print("(a) plain PyTorch loop, one process ...", flush=True)
        plain = plain_loop(examples, base, cfg.steps)
        print("(b) Ray Train, 1 worker ...", flush=True)
        one = ray_train(sft, dataclasses.replace(base, num_workers=1, cpus_per_worker=float(os.cpu_count())), cfg.steps)
        print("(c) Ray Train, 2 workers ...", flush=True)
        two = ray_train(sft, dataclasses.replace(base, num_workers=2), cfg.steps)
        print("full fine-tuning, 1 worker (memory) ...", flush=True)
        full = ray_train(sft, dataclasses.replace(base, num_workers=1, method="full"), 3)
    results = {"benchmark": "train", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg), "plain": plain, "ray_train_1": one, "ray_train_2": two, "full_1": full,
               "ratio_ray_1_over_plain": round(one["tokens_per_s"] / plain["tokens_per_s"], 3),
               "ratio_ray_2_over_1": round(two["tokens_per_s"] / one["tokens_per_s"], 3)}
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    print()
    print(format_table(["variant", "tokens/s", "peak GiB per worker"],
                       [["(a) plain PyTorch loop (LoRA)", plain["tokens_per_s"], plain["peak_memory_gib"]],
                        ["(b) Ray Train, 1 worker (LoRA)", one["tokens_per_s"], one["peak_memory_gib"]],
                        ["(c) Ray Train, 2 workers (LoRA)", two["tokens_per_s"], two["peak_memory_gib"]],
                        ["full fine-tuning, 1 worker", full["tokens_per_s"], full["peak_memory_gib"]]]))
    print(f"(b) ÷ (a): {results['ratio_ray_1_over_plain']}; (c) ÷ (b): {results['ratio_ray_2_over_1']}")
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
