"""Evaluation on the STE benchmark, with the paper's metrics.

    python jobs/evaluate.py                                          # the embedded model, top5 and top5+demos4
    python jobs/evaluate.py --model-url http://host/v1 --model NAME --eval.settings all,top5+oracle
    python jobs/evaluate.py --eval.settings top5,top5+constrained --eval.limit 3   # decoding gain, apart
    python jobs/evaluate.py --predictions mistral.json --judge stored --json       # score a prediction file
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.engine import EngineConfig, RayConfig, explorer_endpoint
from ste_ray.evaluate import (JUDGES, METRICS_HEADERS, Benchmark, EvalSettings, Setting, bar_chart, benchmark_dir,
                              llm_judge, load_demo_pool, metrics_table_rows, per_batch_rows, run_benchmark, score,
                              select_queries)
from ste_ray.model import resolve_model
from ste_ray.report import format_table, markdown_table


@dataclasses.dataclass
class EvaluateConfig:
    """Run a model on the STE benchmark (or score a prediction file) with the paper's metrics."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    # 8192 is the embedded model's context: the 'all' setting's 50 descriptions take about 7,500 tokens.
    engine: EngineConfig = option(default_factory=lambda: EngineConfig(max_model_len=8192),
                                  help="The model under evaluation")
    eval: EvalSettings = option(default_factory=EvalSettings, help="Benchmark settings")
    predictions: str = option("", help="Score this prediction file (the seed's format) instead of running a model")
    json: bool = option(False, help="With --predictions: print only the metrics as JSON")
    judge: str = option(
        "llm", help="Argument check for the APIs not scored by string match: llm (a Yes/No judge), none (string "
        "match for all), stored (the verdicts a prediction file already holds)")
    judge_url: str = option("", help="Judge endpoint (…/v1); empty: the model under evaluation's endpoint")
    judge_model: str = option("", help="Model the judge endpoint serves (with --judge-url)")
    judge_api_key_env: str = option("OPENAI_API_KEY", help="Environment variable holding the judge's API key")
    per_batch: str = option(
        "", help="Continual-learning batches (a JSON list of lists of API names, e.g. CL_batches.json; 'ste' for "
        "the benchmark's own): metrics per batch")
    output: str = option("outputs/evaluate", help="Output directory (predictions/, metrics.json, metrics.md, metrics.png)")
    model_url: str = option("", help="Shorthand for --engine.mode external --engine.url URL")
    model: str = option("", help="Shorthand for --engine.model (the model the endpoint serves, with --model-url)")

    def validate(self) -> None:
        if self.model_url:
            self.engine.mode, self.engine.url = "external", self.model_url
        if self.model:
            self.engine.model = self.model
        if self.judge not in JUDGES:
            fail("judge", f"must be one of {', '.join(JUDGES)}, got {self.judge!r}")
        if self.judge_url and not self.judge_model:
            fail("judge_model", "--judge-url needs the model name the judge endpoint serves")
        if self.predictions and not Path(self.predictions).is_file():
            fail("predictions", f"{self.predictions} is not a file")
        if self.json and not self.predictions:
            fail("json", "only with --predictions")
        if self.per_batch and self.per_batch != "ste" and not Path(self.per_batch).is_file():
            fail("per_batch", f"{self.per_batch} is not a file")


@contextlib.contextmanager
def endpoints(cfg: EvaluateConfig, need_model: bool):
    """The model under evaluation (when needed) and the judge (with --judge llm): the judge is the
    model's own endpoint unless --judge-url names another."""
    own_judge = cfg.judge == "llm" and not cfg.judge_url
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(explorer_endpoint(cfg.engine, cfg.ray)) if need_model or own_judge else None
        judge = model if own_judge else None
        if cfg.judge == "llm" and cfg.judge_url:
            judge = stack.enter_context(explorer_endpoint(EngineConfig(
                mode="external", url=cfg.judge_url, model=cfg.judge_model, api_key_env=cfg.judge_api_key_env)))
        yield model, judge


def load_batches(cfg: EvaluateConfig) -> list[list[str]]:
    if not cfg.per_batch:
        return []
    path = benchmark_dir() / "CL_batches.json" if cfg.per_batch == "ste" else Path(cfg.per_batch)
    return json.loads(path.read_text())


async def score_file(cfg: EvaluateConfig, judge_endpoint) -> dict:
    predictions = json.loads(Path(cfg.predictions).read_text(encoding="utf-8"))
    benchmark = Benchmark.load(cfg.eval.benchmark_dir)
    if judge_endpoint is None:
        return (await score(predictions, benchmark.string_match, cfg.judge)).metrics
    async with judge_endpoint.client(max_concurrency=cfg.eval.max_in_flight) as client:
        return (await score(predictions, benchmark.string_match, cfg.judge, llm_judge(client))).metrics


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = job_config(EvaluateConfig)
    if cfg.predictions:
        with endpoints(cfg, need_model=False) as (_, judge_endpoint):
            result = asyncio.run(score_file(cfg, judge_endpoint))
        if cfg.json:
            print(json.dumps({k: result[k] for k in ("n", "wellformed", "api_match", "correct")}))
        else:
            print(format_table(["file", "n", "wellformed %", "api_match %", "correct %", "judge"],
                               [[cfg.predictions, result["n"], result["wellformed"], result["api_match"],
                                 result["correct"], cfg.judge]]))
        return

    # Bad input fails here, before the engine starts.
    try:
        select_queries(Benchmark.load(cfg.eval.benchmark_dir), cfg.eval.apis, cfg.eval.limit)
        if any(Setting.parse(s).demos for s in cfg.eval.settings):
            load_demo_pool(cfg.eval.demo_pool, Benchmark.load(cfg.eval.benchmark_dir))
        batches = load_batches(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    output = Path(cfg.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with endpoints(cfg, need_model=True) as (model_endpoint, judge_endpoint):
        print(f"evaluating {model_endpoint.model} at {model_endpoint.base_url}: {', '.join(cfg.eval.settings)}",
              file=sys.stderr, flush=True)
        local = resolve_model(cfg.engine.model, cfg.engine.cache_dir or None) if cfg.engine.mode == "start" else cfg.engine.model
        results = asyncio.run(run_benchmark(model_endpoint, cfg.eval, cfg.engine.max_model_len,
                                            local if Path(local).is_dir() else None, cfg.judge, judge_endpoint, output))

    report = {r.setting: {**r.scored.metrics, "wall_s": round(r.elapsed_s, 1), "prompt_tokens": r.prompt_tokens,
                          "completion_tokens": r.completion_tokens, "prompts_cut": r.prompts_cut,
                          "per_batch": [dict(zip(["batch", "n", "wellformed", "api_match", "correct"], row[1:]))
                                        for row in per_batch_rows(r, batches)]}
              for r in results}
    (output / "metrics.json").write_text(json.dumps(
        {"model": model_endpoint.model, "judge": cfg.judge, "config": to_dict(cfg), "settings": report}, indent=2))
    rows = metrics_table_rows(results)
    batch_headers = ["setting", "batch", "n", "wellformed %", "api_match %", "correct %"]
    batch_rows = [row for r in results for row in per_batch_rows(r, batches)]
    (output / "metrics.md").write_text(markdown_table(METRICS_HEADERS, rows) + "\n"
                                       + ("\n" + markdown_table(batch_headers, batch_rows) + "\n" if batch_rows else ""))
    table = format_table(METRICS_HEADERS, rows)
    batch_table = format_table(batch_headers, batch_rows) if batch_rows else ""
    bar_chart(results, output / "metrics.png", f"STE benchmark: {model_endpoint.model}")
    print()
    print(table)
    if batch_table:
        print("\n" + batch_table)
    print(f"\n{len(results)} settings in {time.perf_counter() - started:.0f}s; judge: {cfg.judge}")
    print(f"wrote {output}/predictions/ (one file per setting, re-scorable with --predictions), "
          f"{output}/metrics.json, metrics.md, metrics.png")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
