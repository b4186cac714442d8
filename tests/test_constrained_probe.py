"""Capability detection: endpoints that reject or ignore vLLM's structured outputs are found out by
the probe (a real local HTTP server speaking the OpenAI protocol)."""

from __future__ import annotations

import pytest
from aiohttp import web

from ste_ray.client import LLMClient
from ste_ray.constrained import supports_structured_outputs


def openai_server(behaviour: str) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        constrained = "structured_outputs" in body
        if constrained and behaviour == "reject":
            return web.json_response({"error": {"message": "Unrecognized request argument: structured_outputs"}},
                                     status=400)
        text = "yes" if constrained and behaviour == "honour" else "Hello! How can I help you today?"
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
