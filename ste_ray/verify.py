"""What a trial verifiably did, beside what its explorer claims: whether its last call ran without
an error, and whether its final answer is grounded in a call's result (repeats one of the result's
salient values). Shared by exploration's closing table and exploitation's free checks."""

from __future__ import annotations

import json
import re
from typing import Any

from ste_ray.queries import leaves


def salient_values(observation: str) -> set[str]:
    """The values an answer grounded in ``observation`` would repeat: every number (as written, and
    rounded), every string value of up to 40 characters, and the longer words and numbers inside
    longer ones; booleans and nulls say nothing."""
    try:
        scalars = leaves(json.loads(observation))
    except (json.JSONDecodeError, TypeError):
        scalars = [observation]
    values: set[str] = set()
    for leaf in scalars:
        if isinstance(leaf, bool) or leaf is None:
            continue
        if isinstance(leaf, (int, float)):
            values.add(str(leaf))
            if isinstance(leaf, float):
                values.update({f"{leaf:.2f}", f"{leaf:.1f}", str(round(leaf))})
            continue
        text = str(leaf).strip().lower()
        if 2 <= len(text) <= 40:
            values.add(text)
        values.update(w for w in re.findall(r"[^\W_]{4,}|\d+(?:\.\d+)?", text))
    return values


def grounded(final_answer: str, observation: str) -> bool:
    answer = final_answer.lower().replace(",", "")
    return any(value.replace(",", "") in answer for value in salient_values(observation))


def last_successful_call(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last step that was a parsed call and ran without a tool error."""
    calls = [s for s in steps if s["action"] and not s["parse_error"] and not s["tool_error_kind"]]
    return calls[-1] if calls else None


def last_call_ran(steps: list[dict[str, Any]]) -> bool:
    """The trial's last turn was a parsed call that ran without a tool error."""
    return bool(steps) and last_successful_call(steps[-1:]) is not None


def answer_grounded(steps: list[dict[str, Any]], final_answer: str | None) -> bool:
    """The final answer repeats a value of the last successful call's result."""
    call = last_successful_call(steps)
    return bool((final_answer or "").strip()) and call is not None and grounded(final_answer, call["observation"] or "")
