"""Evaluation: the scorer against the paper's 22 published prediction files, each parse rule on real
outputs from them, retrieval on a hand-checked case, and the runner against the real engine."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ste_ray.benchmark import Benchmark, benchmark_dir
from ste_ray.embeddings import Retriever
from ste_ray.evaluate import EvalSettings, Setting, load_demo_pool, metrics, per_batch_rows, score, select_queries
from ste_ray.evaluate.runner import PromptFitter, load_benchmark, run_setting
from ste_ray.exploit.checks import check_trial
from ste_ray.explore.episode import episode_id
from ste_ray.react import parse_output, tool_prompt
from ste_ray.schema import JudgedTrial, write_records
from tests.conftest import ste_data
from tests.exploration_data import faithful_trials, write_exploration

ROOT = Path(__file__).resolve().parents[1]
PREDICTIONS = ste_data() / "predictions"
FILES = sorted(PREDICTIONS.glob("*.json"))

# The paper's notebook output for these files (wellformed, api_match, correct).
PUBLISHED = {
    "mistral.json": (61.733, 69.33, 30.133), "mistral_FT.json": (99.067, 95.828, 76.8),
    "llama-7Bf.json": (34.533, 40.154, 10.667), "toolLLMv2.json": (98.133, 49.049, 37.333),
    "llama-7Bf_ICL.json": (58.267, 86.728, 41.733), "llama-13Bf_FT.json": (98.933, 95.148, 74.267),
}


def load(name: str) -> dict:
    return json.loads((PREDICTIONS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def benchmark() -> Benchmark:
    return Benchmark.load()


def test_all_22_published_files_are_present():
    assert len(FILES) == 22


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
async def test_scorer_reproduces_the_published_marks(path, benchmark):
    """Every item's no_call / err / api_match as the file records them, hence the same figures."""
    data = json.loads(path.read_text(encoding="utf-8"))
    scored = await score(data, benchmark.string_match, judge="stored")
    for api, items in data.items():
        for item, mark in zip(items, scored.marks[api], strict=True):
            assert (mark["no_call"], mark["err"], mark["api_match"]) == (
                item["no_call"], item.get("err", 0), item.get("api_match", 0)), (api, item["model_output"])
    recorded = {api: [{"no_call": it["no_call"], "err": it.get("err", 0), "api_match": it.get("api_match", 0),
                       "args_correct": it.get("args_correct", 0)} for it in items] for api, items in data.items()}
    assert scored.metrics == metrics(recorded)
    if path.name in PUBLISHED:
        m = scored.metrics
        assert (m["wellformed"], m["api_match"], m["correct"]) == PUBLISHED[path.name]


async def test_string_match_for_all_apis_only_changes_correct(benchmark):
    data = load("mistral_FT.json")
    stored = (await score(data, benchmark.string_match, judge="stored")).metrics
    strict = (await score(data, benchmark.string_match, judge="none")).metrics
    assert (strict["wellformed"], strict["api_match"]) == (stored["wellformed"], stored["api_match"])
    assert strict["correct"] < stored["correct"]  # exact strings are stricter than the judge


@pytest.mark.parametrize("file, api, index, kind, action, reason", [
    # a toolken (<tool_NAME>) is stripped to the API's name
    ("CL_round_0.json", "add_date", 0, "call", "add_date", None),
    # a second "Action Input:" inside the first
    ("CL_round_0.json", "add_date", 1, "error", None, "more than one Action Input"),
    ("CL_round_1.json", "getWolframAlphaResults", 1, "error", None, "no Action Input"),
    # cut off before the closing brace
    ("CL_round_3.json", "CatchLoc%%[Group Management] API access for modifying group information", 0, "error",
     "CatchLoc%%[Group Management] API access for modifying group information", "no JSON object in the Action Input"),
    ("CL_round_3_no_replay.json", "NumbersToLetters%%Convertir cantidad a letra Moneda MXN Ingles", 13, "error",
     "search_general", "the Action Input is not JSON"),
    # an unknown name (Disciplina-3) is grounded to the closest known one
    ("llama-13Bf.json", "colegiosantaana%%Disciplina-1", 0, "call", "colegiosantaana%%Disciplina-1", None),
    ("llama-13Bf.json", "search", 5, "error", None, "no Action"),
    # a Final Answer with no call before it
    ("llama-7Bf_ICL.json", "CatchLoc%%[Group Management] API access for modifying group information", 9, "no_call",
     None, None),
    # text after the arguments (a hallucinated Observation) is ignored
    ("mistral.json", "F1 Latest News%%GET recent F1 news from all sources", 11, "call",
     "F1 Latest News%%GET recent F1 news from all sources", None),
])
def test_parse_rules_on_real_outputs(file, api, index, kind, action, reason):
    data = load(file)
    parsed = parse_output(data[api][index]["model_output"], list(data))
    assert (parsed.kind, parsed.action, parsed.reason) == (kind, action, reason)
    if kind == "call":
        assert isinstance(json.loads(parsed.action_input), dict)


def test_parse_rules_on_constructed_outputs():
    names = ["add_date", "get_today_date"]
    # the paper keeps one pair of outer braces, so nested objects do not survive: not wellformed
    assert parse_output('Action: add_date\nAction Input: {"a": {"b": 1}}', names).kind == "error"
    assert parse_output('Action: add_date\nAction Input: {{"date": "2022-01-01"}}', names).action_input == \
        '{"date": "2022-01-01"}'
    assert parse_output("Action: add_date\\n\nAction Input: {}\\n", names).action == "add_date"
    assert parse_output("Action: x\nAction: y\nAction Input: {}", names).reason == "more than one Action"
    assert parse_output("Thought: done\nFinal Answer: 2022-01-15", names).kind == "no_call"
    # a Final Answer after a call: the call counts
    assert parse_output('Action: add_date\nAction Input: {"days": 1}\nFinal Answer: x', names).kind == "call"


def test_settings_parse_and_reject_nonsense():
    assert Setting.parse("top5+oracle+demos4") == Setting(top=5, oracle=True, demos=4)
    assert Setting.parse("all+constrained").name == "all+constrained"
    for bad in ("top0", "some", "top5+nine", "all+oracle"):
        with pytest.raises(ValueError):
            Setting.parse(bad)


def test_prompt_fitter_cuts_demos_then_tools(benchmark):
    fitter = PromptFitter(None, max_model_len=1024, max_tokens=96)
    apis = benchmark.apis[:10]
    demos = load_demo_pool("benchmark", benchmark)[:6]
    make = lambda a, d: tool_prompt([(x, benchmark.descriptions[x]) for x in a], "What is 2+2?", d)
    prompt, cut = fitter.fit(make, apis, demos)
    assert fitter.tokens(prompt) <= fitter.budget
    assert cut["demos"] == 6 and cut["tools"] and cut["apis"] == apis[:len(apis) - len(cut["tools"])]


def test_retrieval_finds_the_hand_checked_neighbours(benchmark):
    retriever = Retriever()
    apis = ["add_date", "forecast_weather", "Places%%Geographic coordinates by placename",
            "Password Generator API%%Base", "Numbers Translator%%Numbers Translator"]
    queries = ["What will the date be 45 days after 2023-03-01?",
               "Will it rain in Seattle tomorrow?",
               "Give me the latitude and longitude of Lyon.",
               "I need a strong random password."]
    top = Retriever.top_k(retriever.embed(queries), retriever.embed([benchmark.block(a) for a in apis]), k=1)
    assert [apis[i[0]] for i in top] == apis[:4]
    # demonstrations: the nearest query, never the query itself
    pool = ["Will it snow in Denver this weekend?", "What is 17 days after 2021-12-25?", queries[0]]
    nearest = Retriever.top_k(retriever.embed(queries[:2]), retriever.embed(pool), k=1, exclude=[{2}, set()])
    assert nearest == [[1], [0]]


def test_nearest_names_keeps_the_required_name_in_place_of_the_last():
    keys, names = torch.eye(4), ["a", "b", "c", "d"]
    queries = torch.tensor([[1.0, 0.5, 0.2, 0.0], [0.0, 0.1, 0.3, 1.0]])
    assert Retriever.nearest_names(queries, keys, names, 2) == [["a", "b"], ["d", "c"]]
    assert Retriever.nearest_names(queries, keys, names, 2, keep=["d", "d"]) == [["a", "d"], ["d", "c"]]
    assert Retriever.nearest_names(queries, keys, names, 3, keep=["b", "a"]) == [["a", "b", "c"], ["d", "c", "a"]]


def test_top_k_orders_equal_scores_by_index_and_skips_the_excluded():
    """The tensor top-k keeps the old rule for ties (the lower index first), whichever key ties
    across the k-th place, and agrees with a plain sort on scores with many ties."""
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]])
    assert Retriever.top_k(queries, keys, 2) == [[0, 2], [1, 3], [0, 1]]
    assert Retriever.top_k(queries, keys, 4, exclude=[{2}, set(), {0, 1}]) == [[0, 4, 1, 3], [1, 3, 0, 2], [2, 3, 4]]
    assert Retriever.top_k(queries, keys, 9) == [[0, 2, 4, 1, 3], [1, 3, 0, 2, 4], [0, 1, 2, 3, 4]]
    generator = torch.Generator().manual_seed(0)
    scores_from = torch.randint(0, 4, (64, 300), generator=generator).float()  # few distinct values: ties everywhere
    expected = [sorted(range(300), key=lambda j: -row[j])[:7] for row in scores_from.tolist()]
    assert Retriever.top_k(scores_from, torch.eye(300), 7) == expected


def test_bad_input_fails_before_any_work(tmp_path):
    def job(*args):
        return subprocess.run([sys.executable, "jobs/evaluate.py", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    result = job("--eval.settings", "top5+sometimes")
    assert result.returncode != 0 and "eval.settings: setting 'top5+sometimes': unknown part" in result.stderr
    result = job("--eval.apis", "no_such_api", "--output", str(tmp_path))
    assert result.returncode != 0 and "'no_such_api' are not benchmark APIs" in result.stderr
    assert "ray" not in result.stdout.lower()
    (tmp_path / "other.json").write_text(json.dumps({"no_such_api": [{"query": "q", "action": "x", "action_input": "{}"}]}))
    result = job("--eval.queries", str(tmp_path / "other.json"), "--output", str(tmp_path))
    assert result.returncode != 0 and "names APIs that are not benchmark APIs: no_such_api" in result.stderr
    result = job("--judge-model", "judge", "--output", str(tmp_path))
    assert result.returncode != 0 and "judge_model: names the model of --judge-url's endpoint" in result.stderr


def test_other_queries_are_asked_with_the_benchmarks_tools(tmp_path):
    """--eval.queries (e.g. exploitation's development set): the benchmark's catalogue and scoring
    with other queries; an API the file has no query for is skipped."""
    dev = {"add_date": [{"query": "Add 3 days to 2024-01-01.", "action": "add_date",
                         "action_input": '{"date": "2024-01-01", "days": 3}'}]}
    (tmp_path / "dev.json").write_text(json.dumps(dev))
    benchmark = load_benchmark(EvalSettings(queries=str(tmp_path / "dev.json")))
    assert benchmark.tests == dev and len(benchmark.descriptions) == 50
    queries = select_queries(benchmark, ["add_date", "get_today_date"], limit=0)
    assert [(q.api, q.item["query"]) for q in queries] == [("add_date", "Add 3 days to 2024-01-01.")]


def test_demonstrations_come_from_an_exploration_or_an_exploit_output(tmp_path, benchmark):
    """--eval.demo_pool (the pipeline passes its exploit output): an exploration's first clean call
    per trial, an exploitation's kept trials only; a query once; a directory of neither, or one
    without a usable demonstration, is refused."""
    trials, specs = faithful_trials()
    failed = dataclasses.replace(trials[0], episode_id=episode_id("add_date", 9), episode_index=9, query="Fails.",
                                 steps=[dataclasses.replace(trials[0].steps[0], tool_error_kind="bad_request")])
    again = dataclasses.replace(trials[1], episode_id=episode_id("add_date", 8), episode_index=8)  # a query seen
    write_exploration(tmp_path / "explore", [*trials, failed, again], specs)
    expected = [{"query": t.query, "action": t.steps[0].action, "action_input": t.steps[0].action_input}
                for t in trials]
    assert sorted(load_demo_pool(str(tmp_path / "explore"), benchmark), key=expected.index) == expected

    # Exploitation's rows of these trials (its free checks keep them all), the third dropped by the judge.
    schemas = {s.name: s.parameters for s in specs}
    judged = [check_trial(dataclasses.asdict(t), schemas, {}, 3, 400) for t in trials]
    judged[2] = dataclasses.replace(judged[2], kept=False, dropped_by="judge")
    write_records(tmp_path / "exploit" / "judged" / "part-0.parquet", judged, JudgedTrial)
    assert load_demo_pool(str(tmp_path / "exploit"), benchmark) == [e for i, e in enumerate(expected) if i != 2]
    write_records(tmp_path / "dropped" / "judged" / "part-0.parquet", judged[2:3], JudgedTrial)
    with pytest.raises(ValueError, match="holds no usable demonstration"):
        load_demo_pool(str(tmp_path / "dropped"), benchmark)
    with pytest.raises(FileNotFoundError, match="neither 'benchmark' nor an exploration or exploit output"):
        load_demo_pool(str(tmp_path), benchmark)


def test_scoring_job_prints_the_published_figures():
    result = subprocess.run([sys.executable, "jobs/evaluate.py", "--predictions", str(PREDICTIONS / "mistral.json"),
                             "--judge", "stored", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"n": 750, "wellformed": 61.733, "api_match": 69.33, "correct": 30.133}


@pytest.mark.engine
async def test_runner_on_the_real_engine_rescores_to_the_same_numbers(engine, engine_config, benchmark, tmp_path):
    """A few queries through the embedded model in three settings; the file written for each setting
    scores to the same figures, and constrained decoding always yields a call or a final answer."""
    from ste_ray.model import resolve_model

    cfg = EvalSettings(max_in_flight=8)
    queries = select_queries(benchmark, ["add_date", "get_today_date", "forecast_weather", "Places%%Geographic "
                                         "coordinates by placename"], limit=2)
    fitter = PromptFitter(resolve_model("embedded", engine_config.cache_dir or None), engine_config.max_model_len,
                          cfg.max_tokens)
    pool = load_demo_pool("benchmark", benchmark)
    retriever = Retriever()
    async with engine.client(max_concurrency=8) as client:
        results = [await run_setting(client, benchmark, queries, Setting.parse(s), cfg, retriever, pool, fitter,
                                     "none", None, progress=False)
                   for s in ("top2", "top2+demos2", "top2+oracle+constrained")]
    for result in results:
        assert result.scored.metrics["n"] == len(queries) and result.completion_tokens > 0
        path = tmp_path / f"{result.setting}.json"
        path.write_text(json.dumps(result.predictions))
        rescored = await score(json.loads(path.read_text()), benchmark.string_match, judge="none")
        assert rescored.metrics == result.scored.metrics
        for items in result.predictions.values():
            for item in items:
                assert len(item["API_name_list"]) + len(item["tools_cut"]) == 2 and item["model_output"]
    demos = results[1].predictions
    assert all(item["demos"] >= 1 for items in demos.values() for item in items)
    constrained = results[2]
    assert all(m["no_call"] or not m["err"] for ms in constrained.scored.marks.values() for m in ms)
    for api, items in constrained.predictions.items():
        assert all(api in item["API_name_list"] for item in items)  # oracle: the ground truth is offered


async def test_per_batch_metrics_match_the_papers_continual_learning_figures(benchmark):
    """The paper's notebook scores llama-7Bf_FT_flan.json per CL batch; per_batch_rows must agree."""
    scored = await score(load("llama-7Bf_FT_flan.json"), benchmark.string_match, judge="stored")
    batches = json.loads((benchmark_dir() / "CL_batches.json").read_text())
    rows = per_batch_rows("flan", scored, batches)
    assert [row[1:] for row in rows] == [
        [0, 180, 100.0, 92.222, 73.333], [1, 195, 100.0, 98.974, 87.179],
        [2, 180, 100.0, 92.778, 68.333], [3, 195, 95.897, 96.791, 67.179]]


async def test_errors_by_api_count_what_was_called_instead():
    from ste_ray.evaluate.scoring import errors_by_api

    predictions = {"add_date": [
        {"model_output": 'Action: add_date\nAction Input: {"date": "2023-01-01", "days": 3}',
         "action": "add_date", "action_input": '{"date": "2023-01-01", "days": 3}'},
        {"model_output": 'Action: add_date\nAction Input: {"date": "2023-01-01", "days": 4}',
         "action": "add_date", "action_input": '{"date": "2023-01-01", "days": 3}'},
        {"model_output": "Action: get_today_date\nAction Input: {}", "action": "add_date", "action_input": "{}"},
        {"model_output": "Action: get_today_date\nAction Input: {}", "action": "add_date", "action_input": "{}"},
        {"model_output": "Final Answer: 2023-01-04", "action": "add_date", "action_input": "{}"}],
        "get_today_date": []}
    scored = await score(predictions, {"add_date"})
    assert errors_by_api(scored.marks) == {"add_date": {"n": 5, "right_api": 2, "correct": 1, "not_wellformed": 1,
                                                        "instead": {"get_today_date": 2}}}
