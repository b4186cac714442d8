"""Closed-loop load against an OpenAI-compatible endpoint: ``concurrency`` requests always in
flight, each asked for exactly ``max_tokens`` output tokens (``ignore_eos``), so two endpoints that
serve the same model do the same work and their tokens/s compare directly. Each run salts vLLM's
prefix cache (``cache_salt``), so it never reuses what an earlier run on the engine left cached."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
import uuid

from ste_ray.client import Endpoint

TOPICS = [
    "a lighthouse keeper", "a lost umbrella", "the first snow", "a robot gardener", "an old map",
    "a night train", "a quiet library", "a stubborn goat", "a paper boat", "a broken clock",
    "a desert well", "a jazz trumpet", "a river ferry", "a kite festival", "a mountain hut",
    "a secret recipe",
]


def prompt(i: int, filler_words: int = 0) -> list[dict]:
    filler = " ".join(TOPICS[(i + k) % len(TOPICS)].split()[-1] for k in range(filler_words))
    text = f"Write a long story about {TOPICS[i % len(TOPICS)]} (version {i})."
    return [{"role": "user", "content": f"{filler}\n{text}" if filler else text}]


async def run_load(endpoint: Endpoint, concurrency: int, num_requests: int, max_tokens: int,
                   filler_words: int = 0) -> dict:
    """Send ``num_requests`` requests, ``concurrency`` at a time; return throughput and latency."""
    latencies: list[float] = []
    salt = uuid.uuid4().hex
    async with endpoint.client(max_concurrency=concurrency, max_retries=0) as client:
        await client.chat(prompt(10_000), max_tokens=8, temperature=0)  # warm-up, not counted
        before = dataclasses.replace(client.usage)

        async def one(i: int) -> None:
            result = await client.chat(
                prompt(i, filler_words), max_tokens=max_tokens, temperature=1.0,
                extra_body={"ignore_eos": True, "cache_salt": salt},
            )
            latencies.append(result.latency_s)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(num_requests)))
        wall = time.perf_counter() - started
    output_tokens = client.usage.completion_tokens - before.completion_tokens
    requests = client.usage.requests - before.requests
    return {
        "prompt_tokens_per_request": round((client.usage.prompt_tokens - before.prompt_tokens) / max(requests, 1), 1),
        "concurrency": concurrency,
        "requests": num_requests,
        "output_tokens": output_tokens,
        "wall_s": round(wall, 3),
        "output_tokens_per_s": round(output_tokens / wall, 2),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_max_s": round(max(latencies), 3),
    }


async def filler_words_for(endpoint: Endpoint, prompt_tokens: float) -> int:
    """How many filler words bring ``prompt`` to ``prompt_tokens``, measured with the engine's own
    token counts (two one-token requests)."""
    async with endpoint.client(max_retries=0) as client:
        short = await client.chat(prompt(0), max_tokens=1)
        long = await client.chat(prompt(0, 200), max_tokens=1)
    per_word = (long.usage["prompt_tokens"] - short.usage["prompt_tokens"]) / 200
    return max(0, round((prompt_tokens - short.usage["prompt_tokens"]) / per_word))
