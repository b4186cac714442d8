"""Running one tool call once: in-process Python, HTTP (aiohttp) or MCP. Retries, limits and
observations are the actors' business (``ste_ray.tools.calls``); this module only executes and
classifies the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import urllib.parse
from typing import Any

import aiohttp

from ste_ray.retry import retry_after_seconds
from ste_ray.tools.spec import Executor, ToolInputError, ToolSpec


class RetryableToolError(Exception):
    """A failure worth retrying (5xx, 429, connection trouble). ``retry_after`` in seconds."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class ToolCallError(Exception):
    """A definite failure of this call (bad input for the tool, a 4xx, an MCP tool error)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def secret_of(executor: Executor) -> str | None:
    """The API key of an HTTP tool, from this process's environment."""
    return os.environ.get(executor.secret_env) if executor.secret_env else None


class ExecutorRuntime:
    """Executes calls for the tools of one actor; holds their HTTP session and MCP connections."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # env var name → key, handed over by the caller
        self._http: aiohttp.ClientSession | None = None
        self._mcp: dict[str, Any] = {}
        self._exit = contextlib.AsyncExitStack()

    def secret(self, executor: Executor) -> str | None:
        return self.secrets.get(executor.secret_env) or secret_of(executor)

    async def close(self) -> None:
        await self._exit.aclose()
        if self._http is not None:
            await self._http.close()

    async def execute(self, spec: ToolSpec, arguments: dict[str, Any]) -> Any:
        executor = spec.executor
        if executor is None:
            raise ToolCallError("no_executor", f"{spec.name} has no executor configured")
        if executor.kind == "python":
            return await self._python(executor, arguments)
        if executor.kind == "http":
            return await self._http_call(executor, arguments)
        return await self._mcp_call(executor, arguments)

    async def _python(self, executor: Executor, arguments: dict[str, Any]) -> Any:
        fn = executor.function
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(**arguments)
            # Tools are ordinary blocking functions; a worker thread keeps the actor's event loop
            # (other calls, timeouts) running while one computes.
            return await asyncio.to_thread(fn, **arguments)
        except ToolInputError as e:
            raise ToolCallError("tool_error", str(e)) from None
        except (TypeError, ValueError, KeyError, LookupError, ArithmeticError) as e:
            raise ToolCallError("tool_error", f"{type(e).__name__}: {e}") from None

    async def _http_call(self, executor: Executor, arguments: dict[str, Any]) -> Any:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        path = executor.path
        for name in executor.path_params:
            path = path.replace("{" + name + "}", urllib.parse.quote(str(arguments.get(name, "")), safe=""))
        url = executor.base_url + path
        query = {k: _query_value(arguments[k]) for k in executor.query_params if k in arguments}
        body = {k: arguments[k] for k in executor.body_params if k in arguments}
        headers = {}
        secret = self.secret(executor)
        if secret:
            # The key goes only to the tool's own host: the URL is built from its base_url, path
            # parameters are quoted, and redirects (which could lead elsewhere) are not followed.
            headers[executor.secret_header] = f"Bearer {secret}" if executor.secret_header == "Authorization" else secret
        try:
            async with self._http.request(
                executor.method, url, params=query or None, headers=headers,
                json=body if executor.method in ("POST", "PUT", "PATCH") else None, allow_redirects=False,
            ) as resp:
                text = await resp.text()
                if resp.status == 429 or resp.status >= 500:
                    raise RetryableToolError(
                        "http_429" if resp.status == 429 else "http_5xx",
                        f"HTTP {resp.status} {resp.reason}: {text[:200]}",
                        retry_after_seconds(resp.headers.get("Retry-After")),
                    )
                if resp.status >= 300:
                    raise ToolCallError("http_4xx" if resp.status >= 400 else "http_redirect",
                                        f"HTTP {resp.status} {resp.reason}: {text[:500]}")
        except aiohttp.ClientConnectionError as e:
            raise RetryableToolError("connection", f"{type(e).__name__}: {e}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    async def _mcp_call(self, executor: Executor, arguments: dict[str, Any]) -> Any:
        from mcp import Client, StdioServerParameters

        key = executor.mcp_url or " ".join(executor.mcp_command)
        client = self._mcp.get(key)
        if client is None:
            target = executor.mcp_url or StdioServerParameters(
                command=executor.mcp_command[0], args=list(executor.mcp_command[1:]))
            try:
                client = await self._exit.enter_async_context(Client(target))
            except Exception as e:  # the MCP SDK raises many kinds on a failed start
                raise RetryableToolError("connection", f"cannot reach MCP server {key}: {e}") from None
            self._mcp[key] = client
        result = await client.call_tool(executor.mcp_tool, arguments)
        texts = [getattr(block, "text", "") for block in result.content]
        if result.is_error:
            raise ToolCallError("tool_error", " ".join(texts) or "the MCP tool reported an error")
        if getattr(result, "structured_content", None):
            return result.structured_content
        return "\n".join(texts)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
