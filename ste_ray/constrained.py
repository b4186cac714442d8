"""Constrained decoding: with vLLM's structured outputs a trial turn is decoded so that it is
either a Final Answer or exactly one call of the episode's API whose arguments satisfy the tool's
JSON schema (required keys, types, enums). Reflection is constrained to Yes/No; imagination stays
free text.

The constraint is a regular expression generated from the schema and sent as vLLM's
``structured_outputs: {"regex": ...}`` request field. An endpoint that refuses or ignores the field
(a hosted API) is detected once at start (``supports_structured_outputs``) and the run proceeds
unconstrained, with one warning. Lengths are bounded (thought 100 characters, strings 48) so that a
whole call fits the turn's token budget: a turn cut off by ``max_tokens`` would not parse.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ste_ray.client import LLMClient, LLMError
from ste_ray.tools.spec import ToolSpec

STRING = r'"[^"\\\x00-\x1f]{0,48}"'
INTEGER = r"-?[0-9]{1,12}"
NUMBER = r"-?[0-9]{1,12}(\.[0-9]{1,8})?"
BOOLEAN = r"(true|false)"
THOUGHT = r"Thought: [^\n]{1,100}\n"
FINAL = r"Final Answer: [^\n]{1,240}"


def literal(text: str) -> str:
    """``text`` as a regex that matches it exactly. Spaces stay unescaped: vLLM's grammar backend
    (xgrammar) warns on every request about the "\\ " that ``re.escape`` writes."""
    return re.escape(text).replace("\\ ", " ")


def value_regex(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "(" + "|".join(literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]) + ")"
    types = schema.get("type", "string")
    types = types if isinstance(types, list) else [types]
    parts = {"string": STRING, "integer": INTEGER, "number": NUMBER, "boolean": BOOLEAN}
    options = [parts[t] for t in types if t in parts] or [STRING]
    return options[0] if len(options) == 1 else "(" + "|".join(options) + ")"


def arguments_regex(spec: ToolSpec) -> str:
    """A JSON object with the tool's arguments in schema order: every required one, any optional
    one, nothing else."""
    props = spec.parameters.get("properties", {})
    names = list(props)
    fields = [literal(json.dumps(n, ensure_ascii=False)) + ": " + value_regex(props[n]) for n in names]
    required = [n in spec.required for n in names]

    def rest(i: int) -> str:  # the fields after one already written, each preceded by ", "
        return "".join(f", {fields[j]}" if required[j] else f"(, {fields[j]})?" for j in range(i, len(names)))

    # The first field written may be any one that only optional fields precede.
    starts = []
    for k in range(len(names)):
        starts.append(fields[k] + rest(k + 1))
        if required[k]:
            break
    else:
        starts.append("")  # every argument optional: {} too
    body = starts[0] if len(starts) == 1 else "(" + "|".join(starts) + ")"
    return r"\{" + body + r"\}"


def call_regex(spec: ToolSpec) -> str:
    return "Action: " + literal(spec.name) + r"\nAction Input: " + arguments_regex(spec)


def turn_regex(spec: ToolSpec) -> str:
    return THOUGHT + "(" + call_regex(spec) + "|" + FINAL + ")"


REFLECTION_REGEX = "(Yes|No)"


def structured(regex: str) -> dict[str, Any]:
    return {"structured_outputs": {"regex": regex}}


async def supports_structured_outputs(client: LLMClient) -> bool:
    """One tiny request: does the endpoint honour vLLM's structured outputs?"""
    try:
        result = await client.chat([{"role": "user", "content": "Say hello."}], max_tokens=4, temperature=1.0,
                                   extra_body=structured("(yes|no)"))
    except LLMError:
        return False
    return result.text.strip() in ("yes", "no")
