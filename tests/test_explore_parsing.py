"""The ReAct parser, the prompts and the constraints: pure functions, real examples."""

from __future__ import annotations

import json
import re

import pytest

from ste_ray.constrained import REFLECTION_REGEX, arguments_regex, turn_regex
from ste_ray.explore import (NEXT_QUERY_PROMPT, ExploreSettings, clean_query, imagination_prompt, parse_reflection,
                             parse_turn, ste_api_descriptions_path)
from ste_ray.tools.builtin import ste_offline_apis

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
    assert ExploreSettings(no_stm=True, num_stm_slots=4).slots == 1
    assert "Building on what you learned" in NEXT_QUERY_PROMPT


def test_constraint_regex_accepts_valid_calls_only():
    specs = {s.name: s for s in ste_offline_apis(ste_api_descriptions_path())}
    add = specs["add_date"]
    pattern = turn_regex(add)
    ok = 'Thought: add it\nAction: add_date\nAction Input: {"date": "2022-10-14", "days": 90}'
    assert re.fullmatch(pattern, ok)
    assert parse_turn(ok, ["add_date"]).arguments == {"date": "2022-10-14", "days": 90}
    assert re.fullmatch(pattern, "Thought: done\nFinal Answer: 2023-01-12")
    for bad in ['Thought: x\nAction: add_date\nAction Input: {"date": "2022-10-14"}',  # a required key missing
                'Thought: x\nAction: add_date\nAction Input: {"date": "2022-10-14", "days": "90"}',  # wrong type
                'Thought: x\nAction: other\nAction Input: {}']:
        assert not re.fullmatch(pattern, bad), bad
    # Optional arguments may appear or not, in schema order.
    tz = arguments_regex(specs["Stadia Maps Time Zone API%%TZ Lookup by Location"])
    for text in ['{"lat": 1.5, "lng": -2}', '{"lat": 1.5, "lng": -2, "timestamp": 17}']:
        assert re.fullmatch(tz, text) and specs["Stadia Maps Time Zone API%%TZ Lookup by Location"].argument_error(json.loads(text)) is None
    assert re.fullmatch(arguments_regex(specs["Numbers Translator%%Numbers Translator"]), "{}")
    assert re.fullmatch(REFLECTION_REGEX, "Yes") and not re.fullmatch(REFLECTION_REGEX, "Maybe")
