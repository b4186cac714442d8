"""A user's own test set: JSON lines, each a query, the tools offered and the expected call(s).

    {"query": "What date is 30 days after 2023-05-01?", "tools": ["add_date", "days_between"],
     "expected": [{"name": "add_date", "arguments": {"date": "2023-05-01", "days": 30}}]}
    {"query": "...", "tools": [{"type": "function", "function": {"name": ..., "parameters": ...}}],
     "expected": [{"name": "convert_units", "arguments": {"value": 5, "to_unit": {"any_of": ["km", "kilometer"]}}}]}

``tools`` holds OpenAI tools, or names of the tools the job loaded (``--tools``); ``expected`` lists
alternatives (any one is right); an argument may allow several values (``{"any_of": [...]}``).

Metrics, per format: ``wellformed`` (the answer is one call, of an offered tool, with JSON object
arguments), ``name_match`` (of all queries: the call names an expected tool), ``exact`` (of all
queries: the name and every expected argument match). Arguments are compared after normalising:
strings trimmed and case-insensitive; numbers by value (``30``, ``30.0`` and ``"30"`` are equal);
lists element by element, objects key by key. Arguments the model adds beyond the expected ones are
allowed when the tool's schema has them and they equal its default, else the call is not exact.

Formats: ``react`` (ste-ray's tool mode, the paper's prompt), ``react+constrained`` (its grammar) and
``openai`` (the tools in the request's ``tools`` field, the answer read from ``tool_calls``: for
endpoints that parse tool calls themselves, such as vLLM with a tool parser, or hosted APIs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jsonschema

from ste_ray.client import LLMClient, LLMError
from ste_ray.constrained import grammar_request, turn_grammar
from ste_ray.react import STOP, parse_turn, tool_mode_messages
from ste_ray.storage import Location
from ste_ray.tools.spec import ToolSpec, ToolSpecError

FORMATS = ("react", "react+constrained", "openai")


class TestSetError(ValueError):
    """A line of a test set that cannot be scored; the message names the file and the line."""

    __test__ = False  # not a pytest class, for all its name


@dataclasses.dataclass
class ExpectedCall:
    name: str
    arguments: dict[str, Any]


@dataclasses.dataclass
class TestCase:
    __test__ = False  # not a pytest class, for all its name

    line: int
    query: str
    tools: list[ToolSpec]
    expected: list[ExpectedCall]


def _concrete(value: Any) -> Any:
    """An expected value with every ``any_of`` replaced by its first choice (for schema checks)."""
    if isinstance(value, dict):
        if set(value) == {"any_of"}:
            return _concrete(value["any_of"][0])
        return {k: _concrete(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_concrete(v) for v in value]
    return value


def load_test_set(path: Path, loaded: dict[str, ToolSpec]) -> list[TestCase]:
    """Every line, checked before any request: JSON, its fields, known tools, and expected calls
    whose arguments validate against their tool's schema."""
    if not path.is_file():
        raise TestSetError(f"test_set: {path} is not a file")
    cases = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(text)
        except json.JSONDecodeError as e:
            raise TestSetError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(item, dict) or not {"query", "tools", "expected"} <= set(item):
            raise TestSetError(f"{where}: needs query, tools and expected")
        tools = []
        for tool in item["tools"]:
            if isinstance(tool, str):
                if tool not in loaded:
                    raise TestSetError(f"{where}: unknown tool {tool!r} (not among the loaded tools; give its "
                                       "OpenAI definition or load it with --tools)")
                tools.append(loaded[tool])
            elif isinstance(tool, dict) and isinstance(tool.get("function"), dict):
                fn = tool["function"]
                try:
                    tools.append(ToolSpec(name=fn.get("name", ""), description=fn.get("description", ""),
                                          parameters=fn.get("parameters") or {"type": "object", "properties": {}}))
                except ToolSpecError as e:
                    raise TestSetError(f"{where}: {e}") from None
            else:
                raise TestSetError(f"{where}: each tool is a name or an OpenAI tool")
        by_name = {t.name: t for t in tools}
        expected = []
        for call in item["expected"] if isinstance(item["expected"], list) else [item["expected"]]:
            if not isinstance(call, dict) or call.get("name") not in by_name:
                raise TestSetError(f"{where}: an expected call must name one of the offered tools "
                                   f"({', '.join(by_name)})")
            arguments = call.get("arguments", {})
            try:
                jsonschema.validate(_concrete(arguments), by_name[call["name"]].parameters)
            except jsonschema.ValidationError as e:
                raise TestSetError(f"{where}: the expected call of {call['name']} does not fit its schema: "
                                   f"{e.message}") from None
            expected.append(ExpectedCall(call["name"], arguments))
        cases.append(TestCase(number, str(item["query"]), tools, expected))
    if not cases:
        raise TestSetError(f"test_set: {path} has no test cases")
    return cases


# ---------------------------------------------------------------------------------------------
# Scoring


def normalised(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return float(text)
        except ValueError:
            return text
    if isinstance(value, list):
        return [normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    return value


def value_matches(expected: Any, got: Any) -> bool:
    if isinstance(expected, dict) and set(expected) == {"any_of"}:
        return any(value_matches(choice, got) for choice in expected["any_of"])
    return normalised(expected) == normalised(got)


def arguments_exact(expected: dict[str, Any], got: dict[str, Any], schema: dict[str, Any]) -> bool:
    if any(key not in got or not value_matches(value, got[key]) for key, value in expected.items()):
        return False
    properties = schema.get("properties", {})
    extra = [k for k in got if k not in expected]
    return all(k in properties and "default" in properties[k] and value_matches(properties[k]["default"], got[k])
               for k in extra)


def score(case: TestCase, name: str | None, arguments: dict[str, Any] | None) -> dict[str, bool]:
    """wellformed, name_match and exact for one answer (``name`` None: no call)."""
    tools = {t.name: t for t in case.tools}
    wellformed = name is not None and name in tools and isinstance(arguments, dict)
    named = [e for e in case.expected if wellformed and e.name == name]
    exact = any(arguments_exact(e.arguments, arguments, tools[name].parameters) for e in named)
    return {"wellformed": wellformed, "name_match": bool(named), "exact": exact}


def metrics(scores: list[dict[str, bool]]) -> dict[str, float | int]:
    n = len(scores)
    pct = lambda key: round(100 * sum(s[key] for s in scores) / n, 1) if n else 0.0
    return {"n": n, "wellformed": pct("wellformed"), "name_match": pct("name_match"), "exact": pct("exact")}


# ---------------------------------------------------------------------------------------------
# Running


async def supports_tools_field(client: LLMClient, case: TestCase) -> bool:
    """Does the endpoint take the OpenAI ``tools`` field (and answer with tool calls)?"""
    try:
        await client.chat([{"role": "user", "content": case.query}], max_tokens=8,
                          extra_body={"tools": [t.openai() for t in case.tools], "tool_choice": "auto"})
    except LLMError:
        return False
    return True


async def answer(client: LLMClient, case: TestCase, form: str, max_tokens: int) -> dict[str, Any]:
    """One query in one format: the raw answer, the call read from it, and its scores."""
    if form == "openai":
        result = await client.chat([{"role": "user", "content": case.query}], temperature=0.0, max_tokens=max_tokens,
                                   extra_body={"tools": [t.openai() for t in case.tools], "tool_choice": "auto"})
        calls = result.tool_calls
        name, arguments, text = None, None, result.text
        if calls:
            name = calls[0]["function"]["name"]
            try:
                arguments = json.loads(calls[0]["function"]["arguments"] or "{}")
            except json.JSONDecodeError:
                arguments = None
            text = json.dumps(calls, ensure_ascii=False)
    else:
        extra = None
        if form == "react+constrained":
            extra = grammar_request(turn_grammar([(t.name, t.parameters) for t in case.tools], thought=False))
        result = await client.chat(tool_mode_messages([(t.name, t.ste_description()) for t in case.tools], case.query),
                                   temperature=0.0, max_tokens=max_tokens, stop=STOP[:1], extra_body=extra)
        text = result.text
        turn = parse_turn(text, [t.name for t in case.tools])
        name, arguments = (turn.action, turn.arguments) if turn.error is None and turn.action else (None, None)
    return {"line": case.line, "query": case.query, "format": form, "output": text, "name": name,
            "arguments": arguments, **score(case, name, arguments)}


async def run_test_set(client: LLMClient, cases: list[TestCase], formats: list[str], max_tokens: int,
                       output: Path | Location | None) -> dict[str, Any]:
    """Every case in every format the endpoint supports; per-query outputs written to
    ``output/test_set/<format>.jsonl``, the metrics returned."""
    results: dict[str, Any] = {}
    for form in formats:
        if form == "openai" and not await supports_tools_field(client, cases[0]):
            results[form] = {"skipped": "the endpoint does not take the OpenAI tools field"}
            continue
        started = time.perf_counter()
        answers = await asyncio.gather(*(answer(client, case, form, max_tokens) for case in cases))
        results[form] = {**metrics(answers), "wall_s": round(time.perf_counter() - started, 1)}
        if output is not None:
            (Location.of(output) / "test_set" / f"{form}.jsonl").write_text(
                "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
    return results
