"""Constrained decoding: capability detection against local servers that reject, ignore or honour
vLLM's structured outputs; a run against an endpoint without them falls back with one warning; on
the real engine, constrained trial turns always parse and their arguments validate against the
tool's schema, over many samples at temperature 1.0."""

from __future__ import annotations

import asyncio
import logging
import uuid

import jsonschema
import pytest
from aiohttp import web

from ste_ray.client import Endpoint, LLMClient
from ste_ray.constrained import (REFLECTION_REGEX, grammar_request, regex_request, supports_structured_outputs,
                                 turn_grammar)
from ste_ray.explore import ExploreSettings, run_exploration
from ste_ray.react import parse_reflection, parse_turn, trial_prompt
from ste_ray.schema import Trial, read_dir
from ste_ray.tools.builtin import select_builtin
from ste_ray.tools.calls import ToolCallConfig


def openai_server(behaviour: str) -> web.Application:
    """A scripted OpenAI-protocol server (control flow only: no model behind it)."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        constrained = "structured_outputs" in body
        if constrained and behaviour == "reject":
            return web.json_response({"error": {"message": "Unrecognized request argument: structured_outputs"}},
                                     status=400)
        text = "yes" if constrained and behaviour == "honour" else "Thought: I know the answer.\nFinal Answer: 42"
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 4}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("behaviour, supported", [("reject", False), ("ignore", False), ("honour", True)])
async def test_probe(serve_app, behaviour, supported):
    url = await serve_app(openai_server(behaviour))
    async with LLMClient(url + "/v1", "m", max_retries=0) as client:
        assert await supports_structured_outputs(client) is supported


async def test_run_without_structured_outputs_falls_back_with_a_warning(ray_session, serve_app, tmp_path, caplog):
    url = await serve_app(openai_server("reject"))
    settings = ExploreSettings(num_episodes=1, num_stm_slots=1, num_actors=1, constrained=True)
    with caplog.at_level(logging.WARNING, logger="ste_ray.explore"):
        result = await run_exploration(Endpoint(url + "/v1", "m"), select_builtin(["add_date"]), settings,
                                       ToolCallConfig(scope=f"t-{uuid.uuid4().hex[:6]}"), tmp_path,
                                       "fallback", progress=False)
    warnings = [r for r in caplog.records if "does not honour vLLM structured outputs" in r.getMessage()]
    assert len(warnings) == 1 and result.episodes_done == 1 and not result.failures
    trials = read_dir(tmp_path / "trials", Trial).to_pylist()
    assert len(trials) == 1 and trials[0]["constrained"] is False and trials[0]["final_answer"] == "42"


# Tools whose schemas cover strings, integers, numbers, enums and optional arguments, each with a request.
SAMPLED = {
    "add_date": "What date is it 45 days after 2024-02-10?",
    "Stadia Maps Time Zone API%%TZ Lookup by Location": "Which time zone is the point 48.85, 2.35 in?",
    "Places%%Geographic coordinates by placename": "Where is Lyon? Give me its coordinates.",
    "hash_text": "Give me the SHA-1 hash of the word 'banana'.",
    "convert_units": "How many kilometres are 26.2 miles?",
    "public_holidays": "List the public holidays in Japan in 2025.",
    "convert_calendar": "What is 2024-03-11 in the Hebrew calendar?",
    "validate_identifier": "Is DE89370400440532013000 a valid IBAN?",
}
SAMPLES_PER_TOOL = 6


@pytest.mark.engine
async def test_constrained_turns_always_parse_and_validate(engine):
    specs = select_builtin(list(SAMPLED))
    calls = 0
    async with engine.client(max_concurrency=8) as llm:
        # Asked together: the engine batches every tool's samples.
        results = await asyncio.gather(*(llm.chat(
            [{"role": "user", "content": trial_prompt(spec.name, SAMPLED[spec.name])}], temperature=1.0,
            max_tokens=192, n=SAMPLES_PER_TOOL, stop=["Observation:"],
            extra_body=grammar_request(turn_grammar([(spec.name, spec.parameters)]))) for spec in specs))
        for spec, result in zip(specs, results):
            assert len(result.texts) == SAMPLES_PER_TOOL
            for text in result.texts:
                turn = parse_turn(text, [spec.name])
                assert turn.error is None, (spec.name, text)
                assert (turn.action is None) != (turn.final_answer is None), text
                if turn.action is not None:
                    jsonschema.validate(turn.arguments, spec.parameters)
                    calls += 1
        reflection = await llm.chat([{"role": "user", "content": "Did you fulfill the request? Answer Yes or No."}],
                                    temperature=1.0, max_tokens=8, n=4, extra_body=regex_request(REFLECTION_REGEX))
        assert all(parse_reflection(t) is not None and t in ("Yes", "No") for t in reflection.texts)
    # The model is told to call the API first: most samples are calls, not final answers.
    assert calls >= len(specs) * SAMPLES_PER_TOOL // 2


# Schemas beyond flat arguments: arrays of objects, nested objects, optional fields, and strings that
# must be escaped (an enum whose values hold a quote and a backslash, so every sample carries one).
RICH = {
    "place_order": ({"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["sku", "quantity"]}},
        "ship_to": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"]},
        "gift_note": {"type": "string"}}, "required": ["items", "ship_to"]},
        "Order two boxes of tea (SKU T-100) and one mug (SKU M-7), delivered to Lyon."),
    "quote_text": ({"type": "object", "properties": {
        "style": {"enum": ['say "hi"', "back\\slash"]}, "text": {"type": "string"}}, "required": ["style", "text"]},
        'Write the phrase "good morning" in the style that says "hi".'),
}


@pytest.mark.engine
async def test_constrained_turns_honour_nested_schemas_and_escaped_strings(engine):
    """Every sample that ends before the token limit is one call whose arguments satisfy the schema.
    (A schema this large can outgrow a turn's token budget when a small model at temperature 1
    fills every string: such a sample is cut, reported by finish_reason "length", never invalid.)"""
    from ste_ray.tools.spec import ToolSpec

    complete = {name: 0 for name in RICH}
    async with engine.client(max_concurrency=8) as llm:
        results = await asyncio.gather(*(llm.chat(
            [{"role": "user", "content": trial_prompt(name, request)}], temperature=1.0, max_tokens=256,
            n=SAMPLES_PER_TOOL, stop=["Observation:"],
            extra_body=grammar_request(turn_grammar([(name, schema)], allow_final=False)))  # a call, never an answer
            for name, (schema, request) in RICH.items()))
        for (name, (schema, _)), result in zip(RICH.items(), results):
            spec = ToolSpec(name=name, description=f"The {name} API.", parameters=schema)
            for text, finish in zip(result.texts, result.finish_reasons):
                if finish == "length":
                    continue
                turn = parse_turn(text, [name])
                assert turn.error is None and turn.action == name, text
                jsonschema.validate(turn.arguments, schema)
                assert spec.argument_error(turn.arguments) is None
                if name == "quote_text":
                    assert turn.arguments["style"] in ('say "hi"', "back\\slash")  # escaped, and read back
                complete[name] += 1
    # quote_text's longest call (100-character thought, 48-character text) fits 256 tokens: all complete.
    assert complete["quote_text"] == SAMPLES_PER_TOOL and complete["place_order"] >= 1
