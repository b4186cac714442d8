"""The ReAct format and its constraints: the parsers, the prompts and the grammars, on real
examples (pure functions)."""

from __future__ import annotations

import json

import pytest
from xgrammar import Grammar
from xgrammar.testing import _is_grammar_accept_string as accepts

from ste_ray.benchmark import Benchmark
from ste_ray.constrained import turn_grammar
from ste_ray.explore import ExploreSettings
from ste_ray.explore.episode import NEXT_QUERY_PROMPT, clean_query, imagination_prompt
from ste_ray.react import parse_output, parse_reflection, parse_turn, tool_prompt
from ste_ray.tools.builtin import ste_offline_apis
from ste_ray.tools.loaders import ste_api_spec
from ste_ray.tools.sources import ste_api_descriptions_path

APIS = ["add_date"]


def test_a_call():
    turn = parse_turn('Thought: add the days\nAction: add_date\nAction Input: {"date": "2022-10-14", "days": 90}', APIS)
    assert turn.error is None and turn.action == "add_date" and turn.arguments == {"date": "2022-10-14", "days": 90}
    assert turn.thought == "add the days"


def test_a_final_answer():
    turn = parse_turn("Thought: I know the answer.\nFinal Answer: It is 2023-01-12.", APIS)
    assert turn.final_answer == "It is 2023-01-12." and turn.error is None


@pytest.mark.parametrize("text, message", [
    ("Observation: {\"date\": \"2023\"}", "Do not write the Observation yourself"),
    ("I think the date is tomorrow.", "Use the format: Thought, then Action"),
    ("Action: add_date\nAction: add_date\nAction Input: {}", "Use exactly one Action per turn"),
    ("Action: add_dates\nAction Input: {}", "There is no API named 'add_dates'. Only these APIs exist: add_date."),
    ("Action: add_date", "Give exactly one Action Input"),
    ("Action: add_date\nAction Input: {}\nAction Input: {}", "Use exactly one Action Input per turn"),
    ("Action: add_date\nAction Input: date=2022-10-14, days=90", "The Action Input must be one JSON object"),
    ("Action: add_date\nAction Input: [1, 2]", "The Action Input must be one JSON object"),
])
def test_corrective_messages(text, message):
    turn = parse_turn(text, APIS)
    assert turn.error and message in turn.error


def test_reflection_and_query_cleaning():
    assert parse_reflection("Yes, it did.") is True and parse_reflection("No") is False
    assert parse_reflection("I am not sure") is None
    assert clean_query('```\nQuery: "What is 90 days after 2022-10-14?"\nmore') == "What is 90 days after 2022-10-14?"


def test_long_term_memory_and_its_ablation():
    spec = ste_offline_apis(ste_api_descriptions_path(), ["add_date"])[0]
    memory = [("What is 90 days after 2022-10-14?", True), ("What day is it in 3 weeks?", False)]
    prompt = imagination_prompt(spec, memory, ExploreSettings())
    assert spec.ste_block() in prompt
    assert "- What is 90 days after 2022-10-14? (fulfilled: yes)" in prompt
    assert "- What day is it in 3 weeks? (fulfilled: no)" in prompt
    assert "Do not name the API" in prompt
    no_ltm = imagination_prompt(spec, memory, ExploreSettings(no_ltm=True))
    assert "already explored" not in no_ltm and "2022-10-14" not in no_ltm
    assert ExploreSettings(no_stm=True, num_stm_slots=4).trials_per_episode == 1
    assert "Building on what you learned" in NEXT_QUERY_PROMPT


def test_tool_prompt_lists_tools_demos_and_query_in_order():
    prompt = tool_prompt([("a_tool", "does A"), ("b_tool", "does B")], "Do A please",
                         [{"query": "Do B", "action": "b_tool", "action_input": '{"x": 1}'}])
    assert prompt.index("API_name: a_tool\nDescription: does A") < prompt.index("API_name: b_tool")
    assert 'User Query: Do B\nAction: b_tool\nAction Input: {"x": 1}' in prompt
    assert prompt.endswith("User Query: Do A please")
    # The paper's reader takes back what the format writes.
    assert parse_output('Action: b_tool\nAction Input: {"x": 1}', ["a_tool", "b_tool"]).action == "b_tool"


def grammar(tools, thought=True) -> Grammar:
    return Grammar.from_ebnf(turn_grammar(tools, thought))


def test_turn_grammar_accepts_valid_calls_only():
    specs = {s.name: s for s in ste_offline_apis(ste_api_descriptions_path())}
    add = specs["add_date"]
    g = grammar([(add.name, add.parameters)])
    ok = 'Thought: add it\nAction: add_date\nAction Input: {"date": "2022-10-14", "days": 90}'
    assert accepts(g, ok) and parse_turn(ok, ["add_date"]).arguments == {"date": "2022-10-14", "days": 90}
    assert accepts(g, "Thought: done\nFinal Answer: 2023-01-12")
    out_of_calls = grammar([])  # exploration's turn after the last call allowed
    assert accepts(out_of_calls, "Thought: done\nFinal Answer: 2023-01-12") and not accepts(out_of_calls, ok)
    for bad in ['Thought: x\nAction: add_date\nAction Input: {"date": "2022-10-14"}',  # a required key missing
                'Thought: x\nAction: add_date\nAction Input: {"date": "2022-10-14", "days": "90"}',  # wrong type
                'Thought: x\nAction: add_date\nAction Input: {"date": "2022-10-14", "days": 090}',  # not JSON
                'Thought: x\nAction: add_date\nAction Input: {"date": "2022-10-14", "days": 1, "x": 2}',  # unknown key
                'Thought: x\nAction: other\nAction Input: {}']:
        assert not accepts(g, bad), bad
    tz = specs["Stadia Maps Time Zone API%%TZ Lookup by Location"]
    g = grammar([(tz.name, tz.parameters)], thought=False)
    for text in ['{"lat": 1.5, "lng": -2}', '{"lat": 1.5, "lng": -2, "timestamp": 17}']:  # optional argument
        assert accepts(g, f"Action: {tz.name}\nAction Input: {text}") and tz.argument_error(json.loads(text)) is None
    numbers = specs["Numbers Translator%%Numbers Translator"]  # every argument optional
    assert accepts(grammar([(numbers.name, numbers.parameters)], False), f"Action: {numbers.name}\nAction Input: {{}}")


RICH = {  # arrays of objects, nested objects, optional fields, enums, bounds
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}, "required": ["sku", "qty"]}},
        "ship_to": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"]},
        "priority": {"enum": ["low", "high"]},
    },
    "required": ["title", "items"],
}


@pytest.mark.parametrize("arguments, valid", [
    ({"title": 'say "hi" \\ there', "items": [{"sku": "A-1", "qty": 2}, {"sku": "B", "qty": 1}]}, True),
    ({"title": "t", "items": [], "ship_to": {"city": "Lyon", "zip": "69001"}, "priority": "high"}, True),
    ({"title": "t", "items": [{"sku": "A", "qty": 0}]}, False),  # below the minimum
    ({"title": "t", "items": [{"sku": "A"}]}, False),  # a nested required key missing
    ({"title": "t", "items": [], "ship_to": {"zip": "1"}}, False),  # the nested object's required key
    ({"title": "t", "items": [], "priority": "urgent"}, False),  # not in the enum
])
def test_turn_grammar_follows_the_full_schema(arguments, valid):
    text = "Action: order\nAction Input: " + json.dumps(arguments, ensure_ascii=False)
    assert accepts(grammar([("order", RICH)], thought=False), text) is valid


def test_turn_grammar_bounds_lengths():
    g = grammar([("t", {"type": "object", "properties": {"s": {"type": "string"}, "n": {"type": "integer"}},
                        "required": ["s"]})], thought=False)
    assert accepts(g, 'Action: t\nAction Input: {"s": "' + "x" * 48 + '"}')
    assert not accepts(g, 'Action: t\nAction Input: {"s": "' + "x" * 49 + '"}')
    assert not accepts(g, 'Action: t\nAction Input: {"s": "x", "n": 1234567890123456}')


def test_every_benchmark_api_has_a_grammar():
    benchmark = Benchmark.load()
    tools = [(a, ste_api_spec(a, benchmark.descriptions[a], a).parameters) for a in benchmark.apis]
    assert Grammar.from_ebnf(turn_grammar(tools, thought=False))


def test_numbers_keep_their_precision_and_lists_are_bounded():
    g = grammar([("t", {"type": "object", "properties": {"x": {"type": "number"}, "l": {"type": "array"}},
                        "required": ["x"]})], thought=False)
    assert accepts(g, 'Action: t\nAction Input: {"x": 48.85661234}')
    assert accepts(g, 'Action: t\nAction Input: {"x": -2.5e-3, "l": [1, "a", true, null]}')
    assert not accepts(g, 'Action: t\nAction Input: {"x": 1, "l": [1, 2, 3, 4, 5]}')
