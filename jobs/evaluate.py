"""Evaluation on the STE benchmark, with the paper's metrics.

    python jobs/evaluate.py                                          # the embedded model, top5 and top5+demos4
    python jobs/evaluate.py --model-url http://host/v1 --model NAME --eval.settings all,top5+oracle
    python jobs/evaluate.py --eval.settings top5,top5+constrained --eval.limit 3   # decoding gain, apart
    python jobs/evaluate.py --predictions mistral.json --judge stored --json       # score a prediction file
    python jobs/evaluate.py --test-set my_tests.jsonl --tools builtin              # your own test set
"""

import asyncio
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import ClassVar, Literal

from ste_ray.benchmark import Benchmark, benchmark_dir
from ste_ray.client import LLMError
from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.engine import EngineConfig, EngineUnplaceable, endpoint_aliases, model_endpoint
from ste_ray.evaluate import (METRICS_HEADERS, EvalSettings, Setting, llm_judge, load_benchmark, load_demo_pool,
                              metrics_table_rows, per_batch_rows, run_benchmark, score, select_queries)
from ste_ray.evaluate.chart import bar_chart
from ste_ray.evaluate.test_sets import FORMATS, TestSetError, load_test_set, run_test_set
from ste_ray.model import ModelNotFoundError, resolve_model
from ste_ray.report import format_table, markdown_table
from ste_ray.runs import OutputError, log_file, prepare_location
from ste_ray.runtime import JobError, RayConfig, job_console, ray_cluster, run_job
from ste_ray.tools.sources import ToolSource, select_tools
from ste_ray.tools.spec import ToolSpecError

BATCH_HEADERS = ["setting", "batch", "n", "wellformed %", "api_match %", "correct %"]


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
    judge: Literal["llm", "none", "stored"] = option(
        "llm", help="Argument check for the APIs not scored by string match: llm (a Yes/No judge), none (string "
        "match for all), stored (the verdicts a prediction file already holds)")
    judge_url: str = option("", help="Judge endpoint (…/v1); empty: the model under evaluation's endpoint")
    judge_model: str = option("", help="Model the judge endpoint serves (with --judge-url)")
    judge_api_key_env: str = option("OPENAI_API_KEY", help="Environment variable holding the judge's API key")
    per_batch: str = option(
        "", help="Continual-learning batches (a JSON list of lists of API names, e.g. CL_batches.json; 'ste' for "
        "the benchmark's own): metrics per batch")
    test_set: str = option("", help="Run this test set (JSON lines: query, tools, expected calls; see "
                                    "ste_ray/evaluate/test_sets.py) instead of the STE benchmark")
    test_formats: list[str] = option(default_factory=lambda: ["react", "react+constrained", "openai"],
                                     help="Formats of a test set: react (tool mode), react+constrained, openai (the "
                                     "tools field; skipped when the endpoint does not take it)")
    tools: list[ToolSource] = option(default_factory=list, help="Tool sources whose tools a test set may name")
    output: str = option("outputs/evaluate",
                         help="Output directory or filesystem URI (predictions/, metrics.json, metrics.md, metrics.png, logs/)")
    verbose: bool = option(False, help="Show Ray's and vLLM's logs live instead of writing them to the log file")

    aliases: ClassVar = endpoint_aliases("model_url")

    def validate(self) -> None:
        if self.judge_url and not self.judge_model:
            fail("judge_model", "--judge-url needs the model name the judge endpoint serves")
        if self.judge_model and not self.judge_url:
            fail("judge_model", "names the model of --judge-url's endpoint; without --judge-url the judge is the model's "
                                "own endpoint")
        if self.judge_url and self.judge != "llm":
            fail("judge_url", f"--judge {self.judge} asks no judge endpoint; --judge-url needs --judge llm")
        if self.predictions and not Path(self.predictions).is_file():
            fail("predictions", f"{self.predictions} is not a file")
        if self.json and not self.predictions:
            fail("json", "only with --predictions")
        if self.per_batch and self.per_batch != "ste" and not Path(self.per_batch).is_file():
            fail("per_batch", f"{self.per_batch} is not a file")
        if unknown := [f for f in self.test_formats if f not in FORMATS]:
            fail("test_formats", f"unknown: {', '.join(unknown)} (known: {', '.join(FORMATS)})")


@contextlib.contextmanager
def endpoints(cfg: EvaluateConfig, need_model: bool):
    """The model under evaluation (when needed) and the judge (with --judge llm): the judge is the
    model's own endpoint unless --judge-url names another."""
    own_judge = cfg.judge == "llm" and not cfg.judge_url
    with contextlib.ExitStack() as stack:
        model = None
        if need_model or own_judge:
            if cfg.engine.mode == "start":
                stack.enter_context(ray_cluster(cfg.ray))
            model = stack.enter_context(model_endpoint(cfg.engine))
        judge = model if own_judge else None
        if cfg.judge == "llm" and cfg.judge_url:
            judge = stack.enter_context(model_endpoint(EngineConfig(
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


def run_test_set_job(cfg: EvaluateConfig) -> None:
    """A user's test set (see ste_ray/evaluate/test_sets.py), checked whole before any request."""
    loaded, _ = select_tools(cfg.tools, []) if cfg.tools else ([], {})
    cases = load_test_set(Path(cfg.test_set), {t.name: t for t in loaded})
    output = prepare_location(cfg.output)
    with job_console(log_file(output, "evaluate"), cfg.verbose) as console:
        with contextlib.ExitStack() as stack:
            if cfg.engine.mode == "start":
                stack.enter_context(ray_cluster(cfg.ray))
            model = stack.enter_context(model_endpoint(cfg.engine))
            console.print(f"evaluating {model.model} at {model.base_url} on {len(cases)} test cases")

            async def run() -> dict:
                async with model.client(max_concurrency=cfg.eval.max_in_flight) as client:
                    return await run_test_set(client, cases, cfg.test_formats, cfg.eval.max_tokens, output)

            results = asyncio.run(run())
        (output / "test_set" / "metrics.json").write_text(json.dumps(
            {"model": model.model, "test_set": str(Path(cfg.test_set).resolve()), "formats": results}, indent=2))
        rows = [[form, r.get("n", ""), r.get("wellformed", ""), r.get("name_match", ""), r.get("exact", ""),
                 r.get("skipped", "")] for form, r in results.items()]
        console.print()
        console.print(format_table(["format", "n", "wellformed %", "name match %", "exact args %", "note"], rows))
        console.print(f"wrote {output}/test_set/ (metrics.json, one JSONL of answers per format)")


def main() -> None:
    cfg = job_config(EvaluateConfig)
    if cfg.test_set:
        return run_test_set_job(cfg)
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
        benchmark = load_benchmark(cfg.eval)
        select_queries(benchmark, cfg.eval.apis, cfg.eval.limit)
        if any(Setting.parse(s).demos for s in cfg.eval.settings):
            load_demo_pool(cfg.eval.demo_pool, benchmark)
        batches = load_batches(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise JobError(str(e)) from None
    output = prepare_location(cfg.output)
    started = time.perf_counter()
    with job_console(log_file(output, "evaluate"), cfg.verbose) as console:
        with endpoints(cfg, need_model=True) as (model, judge_endpoint):
            console.print(f"evaluating {model.model} at {model.base_url}: {', '.join(cfg.eval.settings)}")
            local = resolve_model(cfg.engine.model, cfg.engine.cache_dir or None) if cfg.engine.mode == "start" else cfg.engine.model
            results = asyncio.run(run_benchmark(model, cfg.eval, cfg.engine.max_model_len,
                                                local if Path(local).is_dir() else None, cfg.judge, judge_endpoint,
                                                output))
        report = {r.setting: {**r.scored.metrics, "wall_s": round(r.elapsed_s, 1), "prompt_tokens": r.prompt_tokens,
                              "completion_tokens": r.completion_tokens, "prompts_cut": r.prompts_cut,
                              "per_batch": [dict(zip(BATCH_HEADERS[1:], row[1:]))
                                            for row in per_batch_rows(r.setting, r.scored, batches)]}
                  for r in results}
        (output / "metrics.json").write_text(json.dumps(
            {"model": model.model, "judge": cfg.judge, "config": to_dict(cfg), "settings": report}, indent=2))
        rows = metrics_table_rows(results)
        batch_rows = [row for r in results for row in per_batch_rows(r.setting, r.scored, batches)]
        (output / "metrics.md").write_text(markdown_table(METRICS_HEADERS, rows) + "\n"
                                           + ("\n" + markdown_table(BATCH_HEADERS, batch_rows) + "\n" if batch_rows else ""))
        bar_chart([(r.setting, r.scored.metrics) for r in results], output / "metrics.png",
                  f"STE benchmark: {model.model}")
        console.print()
        console.print(format_table(METRICS_HEADERS, rows))
        if batch_rows:
            console.print("\n" + format_table(BATCH_HEADERS, batch_rows))
        console.print(f"\n{len(results)} settings in {time.perf_counter() - started:.0f}s; judge: {cfg.judge}")
        console.print(f"wrote {output}/predictions/ (one file per setting, re-scorable with --predictions), "
                      f"{output}/metrics.json, metrics.md, metrics.png")


if __name__ == "__main__":
    run_job(main, expected=(OutputError, LLMError, EngineUnplaceable, ModelNotFoundError, TestSetError, ToolSpecError))
