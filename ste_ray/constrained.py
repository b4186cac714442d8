"""Constrained decoding: with vLLM's structured outputs a model's turn is decoded so that it is
either a Final Answer or exactly one call of an offered tool whose arguments satisfy the tool's
full JSON schema (required and optional keys, types, enums, nested objects, arrays, escaped
strings, numeric bounds). Reflection is constrained to Yes/No; imagination stays free text.

The arguments' grammar is the engine's own: xgrammar, vLLM's structured-output backend, turns each
tool's JSON schema into a grammar (compact separators, no extra properties); the ReAct wrapper
around it (``Thought: ...``, ``Action: <name>``, ``Action Input: ``) is joined to it with
xgrammar's grammar algebra, and the whole is sent as vLLM's ``structured_outputs: {"grammar": ...}``.
One change is made to the JSON rules: strings, numbers and lists are bounded (48 characters, 15
digits, 4 items), so that a whole call fits a turn's token budget; a turn cut off by ``max_tokens``
would not parse, and a small model at temperature 1 does sometimes ramble inside a string.

An endpoint that refuses or ignores the field (a hosted API) is detected once at start
(``supports_structured_outputs``) and the run proceeds unconstrained, with one warning.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from ste_ray.client import LLMClient, LLMError

THOUGHT = r"Thought: [^\n]{1,100}\n"
FINAL = r"Final Answer: [^\n]{1,240}"
REFLECTION_REGEX = "(Yes|No)"
STRING_CHARS, INTEGER_DIGITS, FRACTION_DIGITS, MAX_ITEMS = 48, 15, 8, 4


def literal(text: str) -> str:
    """``text`` as a regex that matches it exactly. Spaces stay unescaped: xgrammar warns on every
    request about the "\\ " that ``re.escape`` writes."""
    return re.escape(text).replace("\\ ", " ")


def _bounded(ebnf: str) -> str:
    """xgrammar's JSON rules with lengths bounded (see the module docstring)."""
    def string_rule(match: re.Match) -> str:
        name, escape = match.group(1), match.group(2)
        return (f'{name}_char ::= (([^\\0-\\x1f\\"\\\\\\r\\n]) | ("\\\\" {escape}))\n'
                f'{name} ::= (({name}_char{{0, {STRING_CHARS}}} "\\""))')

    # basic_string_sub ::= (("\"") | ([^...] basic_string_sub) | ("\\" basic_escape basic_string_sub)) (=(...))
    ebnf = re.sub(r'^(basic_string_sub\w*) ::= \(\("\\""\) \| .*?"\\\\" (basic_escape\w*) \1\)\).*$',
                  string_rule, ebnf, flags=re.M)
    ebnf = ebnf.replace("[0-9]*", f"[0-9]{{0, {INTEGER_DIGITS - 1}}}")
    ebnf = re.sub(r"(basic_number_digits\w*)\{1, -1\}", rf"\1{{1, {FRACTION_DIGITS}}}", ebnf)  # fraction, exponent
    # The other open repetitions: the items after an array's first, an object's further properties.
    return re.sub(r"\{(\d+), -1\}", lambda m: f"{{{m.group(1)}, {max(int(m.group(1)), MAX_ITEMS - 1)}}}", ebnf)


def _arguments(parameters: dict[str, Any]):
    import xgrammar

    return xgrammar.Grammar.from_json_schema(json.dumps(parameters), any_whitespace=False, strict_mode=True)


def _call(name: str, parameters: dict[str, Any]):
    import xgrammar

    head = xgrammar.Grammar.from_regex("Action: " + literal(name) + r"\nAction Input: ")
    return xgrammar.Grammar.concat(head, _arguments(parameters))


@functools.lru_cache(maxsize=4096)
def _turn_grammar(tools_json: str, thought: bool, allow_final: bool) -> str:
    import xgrammar

    options = [_call(name, parameters) for name, parameters in json.loads(tools_json)]
    if allow_final:
        options.append(xgrammar.Grammar.from_regex(FINAL))
    grammar = xgrammar.Grammar.union(*options) if len(options) > 1 else options[0]
    if thought:
        grammar = xgrammar.Grammar.concat(xgrammar.Grammar.from_regex(THOUGHT), grammar)
    ebnf = _bounded(str(grammar))
    xgrammar.Grammar.from_ebnf(ebnf)  # the engine will parse it: fail here, with the tool named, if it cannot
    return ebnf


def turn_grammar(tools: list[tuple[str, dict[str, Any]]], thought: bool = True, allow_final: bool = True) -> str:
    """The grammar of one turn: (a ``Thought`` line, then) one call of one of ``tools`` (name, JSON
    schema of the arguments) with valid arguments, or (with ``allow_final``) a ``Final Answer``."""
    return _turn_grammar(json.dumps(tools), thought, allow_final)


def grammar_request(grammar: str) -> dict[str, Any]:
    return {"structured_outputs": {"grammar": grammar}}


def regex_request(regex: str) -> dict[str, Any]:
    return {"structured_outputs": {"regex": regex}}


async def supports_structured_outputs(client: LLMClient) -> bool:
    """One tiny request: does the endpoint honour vLLM's structured outputs?"""
    try:
        result = await client.chat([{"role": "user", "content": "Say hello."}], max_tokens=4, temperature=1.0,
                                   extra_body=regex_request("(yes|no)"))
    except LLMError:
        return False
    return result.text.strip() in ("yes", "no")
