"""The one async LLM client every stage uses: OpenAI chat-completions over aiohttp.

It bounds concurrency (a semaphore), applies a per-request timeout, retries connection errors, 429
and 5xx with exponential backoff and full jitter (honouring ``Retry-After``), fails fast with the
server's message on other 4xx, and counts tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import aiohttp

from ste_ray.retry import backoff_delay, retry_after_seconds

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMError(RuntimeError):
    """Base class of the client's errors."""


class LLMRequestError(LLMError):
    """The server refused the request (a 4xx other than 408/409/425/429): retrying will not help."""

    def __init__(self, status: int, message: str, url: str):
        super().__init__(f"{url} answered {status}: {message}")
        self.status = status


class LLMUnavailableError(LLMError):
    """The endpoint kept failing (connection errors, timeouts, 429 or 5xx) through every retry."""


@dataclasses.dataclass
class TokenUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0

    def add(self, usage: dict[str, Any] | None) -> None:
        self.requests += 1
        if usage:
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)


@dataclasses.dataclass
class ChatResult:
    texts: list[str]  # one per choice (n)
    finish_reasons: list[str | None]
    usage: dict[str, int]
    latency_s: float
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the first choice's, OpenAI format

    @property
    def text(self) -> str:
        return self.texts[0]


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(body)[:500]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint and the model name to ask it for."""

    base_url: str
    model: str
    api_key: str | None = None

    def client(self, **kwargs: Any) -> LLMClient:
        return LLMClient(self.base_url, self.model, api_key=self.api_key, **kwargs)

    def __repr__(self) -> str:  # keeps the key out of logs
        return f"Endpoint(base_url={self.base_url!r}, model={self.model!r})"


class LLMClient:
    """Async OpenAI-protocol client. Create it inside a running event loop or use ``async with``.

    ``base_url`` ends in ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 300.0,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.usage = TokenUsage()
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Content-Type": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            # The semaphore is the concurrency bound; the connector must not add a lower one.
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(limit=0)
            )
        return self._session

    async def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API call with retries; returns the decoded JSON body."""
        body, _ = await self._request(method, path, payload)
        return body

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> tuple[dict[str, Any], float]:
        """The call and its latency, measured from when it got a concurrency slot (so client-side
        queueing is not counted as the server's time)."""
        url = f"{self.base_url}{path}"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        last_error = "no attempt made"
        async with self._semaphore:
            started = time.perf_counter()
            for attempt in range(self.max_retries + 1):
                if attempt:
                    self.usage.retries += 1
                retry_after = None
                try:
                    async with self._http().request(method, url, json=payload, timeout=timeout) as resp:
                        try:
                            body: Any = await resp.json(content_type=None)
                        except ValueError:
                            body = await resp.text()
                        if resp.status < 400 and isinstance(body, dict):
                            return body, time.perf_counter() - started
                        if resp.status < 400:
                            raise LLMRequestError(resp.status, f"expected a JSON object, got {body!r:.200}", url)
                        if resp.status not in RETRYABLE_STATUS:
                            raise LLMRequestError(resp.status, _error_message(body), url)
                        last_error = f"HTTP {resp.status}: {_error_message(body)}"
                        retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as e:
                    last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if attempt < self.max_retries:
                    delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, retry_after)
                    logger.debug("%s %s failed (%s); retry %d in %.2fs", method, url, last_error, attempt + 1, delay)
                    await asyncio.sleep(delay)
        raise LLMUnavailableError(
            f"{method} {url} failed after {self.max_retries + 1} attempts; last error: {last_error}"
        )

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        n: int | None = None,
        stop: list[str] | str | None = None,
        seed: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> ChatResult:
        """POST /chat/completions. ``extra_body`` carries engine-specific fields (vLLM's
        ``structured_outputs``, ``top_k``, ...) merged into the request as the OpenAI SDK does."""
        payload: dict[str, Any] = {"model": self.model, "messages": messages}
        for key, value in (
            ("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens),
            ("n", n), ("stop", stop), ("seed", seed),
        ):
            if value is not None:
                payload[key] = value
        if extra_body:
            payload.update(extra_body)
        body, latency = await self._request("POST", "/chat/completions", payload)
        choices = body.get("choices") or []
        if not choices:
            raise LLMRequestError(200, f"response has no choices: {body!r:.300}", self.base_url)
        usage = body.get("usage") or {}
        self.usage.add(usage)
        return ChatResult(
            texts=[(c.get("message") or {}).get("content") or "" for c in choices],
            finish_reasons=[c.get("finish_reason") for c in choices],
            usage={k: int(v) for k, v in usage.items() if isinstance(v, int)},
            latency_s=latency,
            tool_calls=list((choices[0].get("message") or {}).get("tool_calls") or []),
        )

    async def models(self) -> list[str]:
        """GET /models: the ids the endpoint serves."""
        body = await self.request("GET", "/models")
        return [m["id"] for m in body.get("data", [])]
