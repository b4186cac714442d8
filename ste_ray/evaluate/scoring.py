"""The paper's metrics, exactly as its evaluation computes them, so that its published prediction
files score to its published figures:

  wellformed  share of all examples whose output parses as one call with JSON arguments; an output
              that only gives "Final Answer:" is a no-call and is not wellformed
  api_match   share of the wellformed ones that call the ground truth's API
  correct     share of all examples that call the right API with correct arguments: every
              ground-truth argument string-equal (stripped, case-insensitive) for the APIs listed as
              string-match; a judge's Yes/No on semantic equivalence for the others

Outputs are read with the paper's own parser (``ste_ray.react.parse_output``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections import Counter
from typing import Any, Awaitable, Callable

from ste_ray.client import LLMClient
from ste_ray.react import parse_output

JUDGES = ("llm", "none", "stored")

# A judge says whether a predicted call (API, arguments) is semantically the ground truth's.
Judge = Callable[[str, dict[str, Any], dict[str, Any]], Awaitable[bool]]

JUDGE_PROMPT = (
    "Decide whether an API call is correct, given the correct (ground truth) call. The call does not have "
    "to be identical: it is correct when it means the same thing and misses no important detail of the "
    "arguments.\n\nGround truth call:\nAPI name: {api}\nArguments: {truth}\n\n"
    "Call to check:\nAPI name: {api}\nArguments: {predicted}\n\n"
    "Is the call to check correct? Start your answer with Yes or No.")


def arguments_match(truth: dict[str, Any], predicted: dict[str, Any]) -> bool:
    """Every ground-truth argument present with the same value as text (stripped, case-insensitive)."""
    return all(key in predicted and str(predicted[key]).strip().lower() == str(value).strip().lower()
               for key, value in truth.items())


def llm_judge(client: LLMClient) -> Judge:
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


def errors_by_api(marks: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per ground-truth API with examples: how many there are, how many called that API, how many
    were correct, how many gave no call or did not parse, and the APIs called instead (name → count,
    the most frequent first; a name that no offered tool has is counted under its own spelling)."""
    result = {}
    for api, items in marks.items():
        if not items:
            continue
        instead = Counter(m["parsed_action"] for m in items if not (m["no_call"] or m["err"] or m["api_match"]))
        result[api] = {"n": len(items), "right_api": sum(m["api_match"] for m in items),
                       "correct": sum(m["args_correct"] for m in items),
                       "not_wellformed": sum(m["no_call"] or m["err"] for m in items),
                       "instead": dict(instead.most_common())}
    return result


def per_batch_rows(setting: str, scored: Scored, batches: list[list[str]]) -> list[list[Any]]:
    """Metrics per continual-learning batch: [setting, batch, n, wellformed, api_match, correct]."""
    rows = []
    for i, batch in enumerate(batches):
        m = metrics(scored.marks, batch)
        if m["n"]:
            rows.append([setting, i, m["n"], m["wellformed"], m["api_match"], m["correct"]])
    return rows
