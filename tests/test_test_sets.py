"""A user's own test set: scoring checked by hand on a right call, a wrong argument, a wrong tool and a
non-call; bad lines named before any request; and a small test set of built-in tools run against the
real engine in each format it supports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ste_ray.evaluate.test_sets import TestSetError, load_test_set, metrics, run_test_set, score
from ste_ray.tools.builtin import builtin_by_name

TOOLS = builtin_by_name()
LINES = [
    {"query": "What date is 30 days after 2023-05-01?", "tools": ["add_date", "days_between"],
     "expected": [{"name": "add_date", "arguments": {"date": "2023-05-01", "days": 30}}]},
    {"query": "How many days are there between 2024-01-01 and 2024-03-01?", "tools": ["days_between", "add_date"],
     "expected": [{"name": "days_between", "arguments": {"start_date": "2024-01-01", "end_date": "2024-03-01"}}]},
    {"query": "Convert 5 miles to kilometres.", "tools": ["convert_units"],
     "expected": [{"name": "convert_units", "arguments": {"value": 5, "from_unit": {"any_of": ["mile", "miles", "mi"]},
                                                            "to_unit": {"any_of": ["km", "kilometer", "kilometre"]}}}]},
    {"query": "What is the SHA-256 hash of the word banana?", "tools": ["hash_text", {"type": "function", "function": {
        "name": "reverse_text", "description": "Reverse a text.", "parameters": {
            "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}],
     "expected": [{"name": "hash_text", "arguments": {"text": "banana"}}]},
]


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_scores_by_hand(tmp_path):
    cases = load_test_set(write(tmp_path / "t.jsonl", LINES), TOOLS)
    first, _, units, hashing = cases
    right = score(first, "add_date", {"date": "2023-05-01", "days": "30"})  # "30" is the number 30
    wrong_argument = score(first, "add_date", {"date": "2023-05-02", "days": 30})
    wrong_tool = score(first, "days_between", {"start_date": "2023-05-01", "end_date": "2023-05-31"})
    no_call = score(first, None, None)
    assert right == {"wellformed": True, "name_match": True, "exact": True}
    assert wrong_argument == {"wellformed": True, "name_match": True, "exact": False}
    assert wrong_tool == {"wellformed": True, "name_match": False, "exact": False}
    assert no_call == {"wellformed": False, "name_match": False, "exact": False}
    assert metrics([right, wrong_argument, wrong_tool, no_call]) == {
        "n": 4, "wellformed": 75.0, "name_match": 50.0, "exact": 25.0}
    assert score(units, "convert_units", {"value": 5.0, "from_unit": " Miles", "to_unit": "KM"})["exact"]
    # an extra argument is exact only when it is the schema's default
    assert score(hashing, "hash_text", {"text": "banana", "algorithm": "sha256"})["exact"]
    assert not score(hashing, "hash_text", {"text": "banana", "algorithm": "md5"})["exact"]
    assert not score(hashing, "made_up_tool", {})["wellformed"]


@pytest.mark.parametrize("line, message", [
    ("{not json", ":1: not JSON"),
    ({"query": "q", "tools": ["add_date"]}, ":1: needs query, tools and expected"),
    ({"query": "q", "tools": ["no_such_tool"], "expected": []}, ":1: unknown tool 'no_such_tool'"),
    ({"query": "q", "tools": ["add_date"], "expected": [{"name": "days_between", "arguments": {}}]},
     ":1: an expected call must name one of the offered tools"),
    ({"query": "q", "tools": ["add_date"], "expected": [{"name": "add_date", "arguments": {"date": "x"}}]},
     "does not fit its schema: 'days' is a required property"),
    ({"query": "q", "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
      "expected": []}, ":1: tool 'f': parameters"),
])
def test_bad_lines_are_named_before_any_request(tmp_path, line, message):
    with pytest.raises(TestSetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_test_set(write(tmp_path / "t.jsonl", [line]), TOOLS)


@pytest.mark.engine
async def test_a_small_test_set_against_the_real_engine(engine, tmp_path):
    cases = load_test_set(write(tmp_path / "t.jsonl", LINES), TOOLS)
    async with engine.client(max_concurrency=8) as client:
        results = await run_test_set(client, cases, ["react", "react+constrained", "openai"], 96, tmp_path)
    # The Serve engine runs no tool-call parser: the tools field is refused, and that format skipped.
    assert "skipped" in results["openai"]
    constrained = results["react+constrained"]
    assert constrained["n"] == 4 and constrained["wellformed"] == 100.0  # the grammar allows only offered tools
    for form in ("react", "react+constrained"):
        answers = [json.loads(line) for line in (tmp_path / "test_set" / f"{form}.jsonl").read_text().splitlines()]
        assert len(answers) == 4 and all(a["output"] is not None for a in answers)
        # The reported metrics are the per-query scores, recomputed here from the written answers.
        assert metrics([{k: a[k] for k in ("wellformed", "name_match", "exact")} for a in answers]) == \
            {k: results[form][k] for k in ("n", "wellformed", "name_match", "exact")}
        for a, case in zip(answers, cases):
            assert a["exact"] == score(case, a["name"], a["arguments"])["exact"]
