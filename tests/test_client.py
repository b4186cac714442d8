"""The shared LLM client against a real local aiohttp server that fails on purpose."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from ste_ray.client import LLMClient, LLMRequestError, LLMUnavailableError


def completion(text="ok", prompt_tokens=5, completion_tokens=2):
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class ScriptedServer:
    """Answers /v1/chat/completions with the next scripted (status, headers, delay) or 200."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def chat(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, headers, delay = self.script.pop(0) if self.script else (200, {}, 0.05)
            await asyncio.sleep(delay)
            if status == 200:
                return web.json_response(completion(), headers=headers)
            return web.json_response({"error": {"message": f"scripted {status}"}}, status=status, headers=headers)
        finally:
            self.in_flight -= 1


@pytest.fixture
def serve_script(serve_app):
    async def start(script=()):
        server = ScriptedServer(script)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", server.chat)
        return server, await serve_app(app) + "/v1"

    return start


MESSAGES = [{"role": "user", "content": "hi"}]


async def test_retries_5xx_then_succeeds(serve_script):
    server, url = await serve_script([(503, {}, 0), (500, {}, 0)])
    async with LLMClient(url, "m", backoff_base_s=0.01) as client:
        result = await client.chat(MESSAGES, max_tokens=3, stop=["\n"], seed=1)
    assert result.text == "ok"
    assert len(server.requests) == 3
    assert client.usage.retries == 2
    assert (client.usage.requests, client.usage.prompt_tokens, client.usage.completion_tokens) == (1, 5, 2)
    sent = server.requests[-1]
    assert sent["model"] == "m" and sent["max_tokens"] == 3 and sent["stop"] == ["\n"] and sent["seed"] == 1


async def test_honours_retry_after(serve_script):
    server, url = await serve_script([(429, {"Retry-After": "1"}, 0)])
    async with LLMClient(url, "m", backoff_base_s=0.001) as client:
        started = time.perf_counter()
        await client.chat(MESSAGES)
        elapsed = time.perf_counter() - started
    assert len(server.requests) == 2
    assert elapsed >= 0.95, "the client retried before Retry-After elapsed"


async def test_gives_up_with_a_clear_error(serve_script):
    server, url = await serve_script([(502, {}, 0)] * 10)
    async with LLMClient(url, "m", max_retries=3, backoff_base_s=0.01) as client:
        with pytest.raises(LLMUnavailableError, match=r"after 4 attempts; last error: HTTP 502: scripted 502"):
            await client.chat(MESSAGES)
    assert len(server.requests) == 4


async def test_client_error_is_not_retried(serve_script):
    server, url = await serve_script([(400, {}, 0)])
    async with LLMClient(url, "m", backoff_base_s=0.01) as client:
        with pytest.raises(LLMRequestError, match="answered 400: scripted 400") as info:
            await client.chat(MESSAGES)
    assert info.value.status == 400
    assert len(server.requests) == 1


async def test_timeout_is_retried(serve_script):
    server, url = await serve_script([(200, {}, 2.0)])
    async with LLMClient(url, "m", timeout_s=0.3, backoff_base_s=0.01) as client:
        result = await client.chat(MESSAGES)
    assert result.text == "ok" and len(server.requests) == 2 and client.usage.retries == 1


async def test_connection_refused_gives_up():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket closes
    async with LLMClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_base_s=0.01) as client:
        with pytest.raises(LLMUnavailableError, match="after 3 attempts; last error: ClientConnectorError"):
            await client.chat(MESSAGES)


async def test_concurrency_limit(serve_script):
    server, url = await serve_script([(200, {}, 0.1)] * 12)
    async with LLMClient(url, "m", max_concurrency=3) as client:
        results = await asyncio.gather(*(client.chat(MESSAGES) for _ in range(12)))
    assert len(results) == 12
    assert server.max_in_flight == 3


async def test_api_key_header(serve_app):
    seen = {}

    async def handler(request):
        seen["auth"] = request.headers.get("Authorization")
        return web.json_response(completion())

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with LLMClient(await serve_app(app) + "/v1", "m", api_key="sk-test") as client:
        await client.chat(MESSAGES)
    assert seen["auth"] == "Bearer sk-test"
