"""Every tool call in every stage goes through here.

``ToolBox`` (caller side, any process) sends calls to ``ToolCallActor``s: one named Ray actor per
executor group (one per HTTP host, one per MCP server, one for the in-process Python tools), found
by name, so every caller in the cluster shares its limits. Inside an actor each tool has its own
token bucket (requests/s and burst), concurrency cap, timeout and retry policy. Arguments are
validated against the tool's schema first; results are truncated; every outcome, good or bad,
comes back as an ``Observation`` whose text the explorer can read. A record/replay cache keyed by
tool and normalized arguments lets an exploration run again with no backend at all.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

import ray
from ray.util import metrics

from ste_ray.config import fail, option
from ste_ray.retry import backoff_delay
from ste_ray.tools.executors import ExecutorRuntime, RetryableToolError, ToolCallError, secret_of
from ste_ray.tools.spec import ToolSpec, normalized_arguments

ACTOR_NAMESPACE = "ste-ray"


@dataclasses.dataclass
class ToolLimits:
    """How one tool may be called. Shared by every caller of that tool in the cluster."""

    rate_per_s: float = option(20.0, help="Token-bucket refill: calls per second", gt=0)
    burst: int = option(20, help="Token-bucket size: calls allowed at once after a quiet spell", ge=1)
    max_concurrency: int = option(8, help="Calls of this tool in flight at once", ge=1)
    timeout_s: float = option(30.0, help="Time limit of one attempt", gt=0)
    max_retries: int = option(3, help="Retries after timeouts, 429, 5xx and connection errors", ge=0)
    backoff_base_s: float = option(0.5, help="First retry delay; doubles each retry, with full jitter", gt=0)
    backoff_max_s: float = option(10.0, help="Longest retry delay (a longer Retry-After is capped here)", gt=0)
    max_result_chars: int = option(2048, help="Results longer than this are truncated for the explorer", ge=1)


@dataclasses.dataclass
class ToolLimitOverrides:
    """Limits of one tool that differ from the defaults (unset fields keep the default)."""

    rate_per_s: float | None = option(None, help="Token-bucket refill: calls per second", gt=0)
    burst: int | None = option(None, help="Token-bucket size", ge=1)
    max_concurrency: int | None = option(None, help="Calls of this tool in flight at once", ge=1)
    timeout_s: float | None = option(None, help="Time limit of one attempt", gt=0)
    max_retries: int | None = option(None, help="Retries after transient failures", ge=0)
    backoff_base_s: float | None = option(None, help="First retry delay", gt=0)
    backoff_max_s: float | None = option(None, help="Longest retry delay", gt=0)
    max_result_chars: int | None = option(None, help="Truncation length of results", ge=1)


@dataclasses.dataclass
class ToolCallConfig:
    """The tool-call path: limits, overrides per tool, and the record/replay cache."""

    limits: ToolLimits = option(default_factory=ToolLimits, help="Default limits of every tool")
    per_tool: dict[str, ToolLimitOverrides] = option(
        default_factory=dict, help="Limits per tool name, overriding the defaults: {add_date: {rate_per_s: 5}}"
    )
    record_mode: Literal["off", "record", "replay"] = option(
        "off", help="off, record (save every call's observation) or replay (no backend)")
    record_dir: str = option("", help="Directory of the record/replay cache (one JSONL file per actor group)")
    actor_num_cpus: float = option(0.0, help="Ray CPUs reserved per tool-call actor", ge=0)
    scope: str = option(
        "default", help="Actors are shared by name within a scope: runs in the same scope share tool limits"
    )

    def validate(self) -> None:
        if self.record_mode != "off" and not self.record_dir:
            fail("record_dir", f"record_mode={self.record_mode} needs a directory")
        if self.record_mode == "off" and self.record_dir:
            fail("record_dir", "is read only with record_mode record or replay (the mode is off)")
        if self.record_mode == "replay" and not Path(self.record_dir).is_dir():
            fail("record_dir", f"replay needs an existing directory, {self.record_dir!r} is not one")


def limits_for(cfg: ToolCallConfig, tool: str) -> ToolLimits:
    overrides = cfg.per_tool.get(tool)
    if overrides is None:
        return cfg.limits
    return dataclasses.replace(cfg.limits, **{k: v for k, v in dataclasses.asdict(overrides).items() if v is not None})


@dataclasses.dataclass
class Observation:
    """The outcome of one call, as the explorer will read it (``text``) and as metrics count it."""

    tool: str
    ok: bool
    text: str
    error_kind: str | None = None  # invalid_arguments, unknown_tool, timeout, http_429, http_5xx, ...
    attempts: int = 0
    latency_s: float = 0.0
    truncated: bool = False
    replayed: bool = False


# ---------------------------------------------------------------------------------------------
# Limits inside an actor


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``acquire`` waits for a token, first come first
    served (the lock queues waiters in order)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                # The next token's arrival time is known exactly; sleeping until then is the event.
                await asyncio.sleep((1 - self.tokens) / self.rate)


class _ToolState:
    def __init__(self, spec: ToolSpec, limits: ToolLimits):
        self.spec, self.limits = spec, limits
        self.bucket = TokenBucket(limits.rate_per_s, limits.burst)
        self.slots = asyncio.Semaphore(limits.max_concurrency)
        self.calls = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=10_000)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class ToolCallActor:
    """Runs the calls of one executor group (created as a named Ray actor by ``ToolBox``)."""

    def __init__(self, group: str, specs: list[ToolSpec], cfg: ToolCallConfig, secrets: dict[str, str] | None = None):
        self.group = group
        self.cfg = cfg
        self.tools: dict[str, _ToolState] = {}
        self.secrets: list[str] = []
        self.runtime = ExecutorRuntime()
        self.add_tools(specs, secrets)
        self.record_path = Path(cfg.record_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', group)}.jsonl" if cfg.record_dir else None
        self.recorded: dict[tuple[str, str], dict] = {}
        if cfg.record_mode == "replay":
            for path in Path(cfg.record_dir).glob("*.jsonl"):
                for line in path.read_text().splitlines():
                    entry = json.loads(line)
                    self.recorded[(entry["tool"], entry["arguments"])] = entry["observation"]
        self.metric_calls = metrics.Counter(
            "ste_tool_calls", "Tool calls by outcome", tag_keys=("tool", "outcome"))
        self.metric_latency = metrics.Histogram(
            "ste_tool_call_latency_s", "Tool call latency, all attempts",
            boundaries=[0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], tag_keys=("tool",))

    def add_tools(self, specs: list[ToolSpec], secrets: dict[str, str] | None = None) -> None:
        """Serve these tools too (a later caller of a shared actor may bring more of its group)."""
        self.runtime.secrets.update(secrets or {})
        for spec in specs:
            if spec.name not in self.tools:
                self.tools[spec.name] = _ToolState(spec, limits_for(self.cfg, spec.name))
                secret = self.runtime.secret(spec.executor) if spec.executor else None
                if secret:
                    self.secrets.append(secret)

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation:
        state = self.tools.get(name)
        if state is None:
            return Observation(name, False, f"Error: no API named {name!r} is served here", "unknown_tool")
        started = time.perf_counter()
        observation = await self._observe(state, arguments)
        observation.latency_s = time.perf_counter() - started
        state.calls += 1
        state.latencies.append(observation.latency_s)
        if not observation.ok:
            state.errors[observation.error_kind or "error"] += 1
        tag = name.encode("ascii", "backslashreplace").decode()  # Ray's metric tags must be ASCII
        self.metric_calls.inc(1, tags={"tool": tag, "outcome": observation.error_kind or "ok"})
        self.metric_latency.observe(observation.latency_s, tags={"tool": tag})
        return observation

    async def _observe(self, state: _ToolState, arguments: dict[str, Any]) -> Observation:
        spec = state.spec
        error = spec.argument_error(arguments)
        if error:
            return Observation(spec.name, False, f"Error: {error}", "invalid_arguments")
        key = (spec.name, normalized_arguments(arguments))
        if self.cfg.record_mode == "replay":
            entry = self.recorded.get(key)
            if entry is None:
                return Observation(spec.name, False, "Error: no recorded result for this call (replay mode)", "replay_miss")
            return dataclasses.replace(Observation(**entry), replayed=True)
        observation = await self._execute_with_retries(state, arguments)
        if self.cfg.record_mode == "record" and self.record_path:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"tool": key[0], "arguments": key[1], "observation": dataclasses.asdict(observation)},
                              ensure_ascii=False)
            with self.record_path.open("a") as f:
                f.write(_scrub(line, self.secrets) + "\n")
        return observation

    async def _execute_with_retries(self, state: _ToolState, arguments: dict[str, Any]) -> Observation:
        spec, limits = state.spec, state.limits
        last_kind, last_message = "error", ""
        for attempt in range(1, limits.max_retries + 2):
            retry_after = None
            await state.bucket.acquire()
            async with state.slots:
                try:
                    result = await asyncio.wait_for(self.runtime.execute(spec, arguments), limits.timeout_s)
                    return self._success(spec.name, result, attempt, limits)
                except ToolCallError as e:
                    return Observation(spec.name, False, _scrub(f"Error: {e}", self.secrets), e.kind, attempt)
                except asyncio.TimeoutError:
                    last_kind, last_message = "timeout", f"no answer within {limits.timeout_s:g}s"
                except RetryableToolError as e:
                    last_kind, last_message, retry_after = e.kind, str(e), e.retry_after
            if attempt <= limits.max_retries:
                await asyncio.sleep(backoff_delay(attempt - 1, limits.backoff_base_s, limits.backoff_max_s, retry_after))
        text = f"Error: {spec.name} failed after {limits.max_retries + 1} attempts ({last_kind}): {last_message}"
        return Observation(spec.name, False, _scrub(text, self.secrets), last_kind, limits.max_retries + 1)

    def _success(self, name: str, result: Any, attempts: int, limits: ToolLimits) -> Observation:
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
        text = _scrub(text, self.secrets)
        truncated = len(text) > limits.max_result_chars
        if truncated:
            text = text[: limits.max_result_chars] + f"... [truncated {len(text) - limits.max_result_chars} characters]"
        return Observation(name, True, text, None, attempts, truncated=truncated)

    async def stats(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"calls": s.calls, "errors": dict(s.errors),
                   "latency_p50_s": _percentile(list(s.latencies), 0.50),
                   "latency_p95_s": _percentile(list(s.latencies), 0.95),
                   "latency_p99_s": _percentile(list(s.latencies), 0.99)}
            for name, s in self.tools.items() if s.calls
        }

    async def close(self) -> None:
        await self.runtime.close()


# ---------------------------------------------------------------------------------------------
# Caller side


class ToolBox:
    """The tools of a run, called by name through their group's shared actor."""

    def __init__(self, specs: list[ToolSpec], cfg: ToolCallConfig | None = None):
        self.cfg = cfg or ToolCallConfig()
        self.specs = {s.name: s for s in specs}
        groups: dict[str, list[ToolSpec]] = collections.defaultdict(list)
        for spec in specs:
            groups[spec.executor.group if spec.executor else "python"].append(spec)
        # API keys named by the specs travel from the caller's environment to the actors as
        # arguments: Ray logs a runtime_env's env_vars in plain text (runtime_env_agent.log), its
        # actor arguments never. An actor also finds keys in its own node's environment.
        secrets = {s.executor.secret_env: v for s in specs if s.executor and (v := secret_of(s.executor))}
        remote_cls = ray.remote(ToolCallActor)
        self.actors = {
            group: remote_cls.options(
                name=f"ste-tools:{self.cfg.scope}:{group}", namespace=ACTOR_NAMESPACE, get_if_exists=True,
                num_cpus=self.cfg.actor_num_cpus, max_restarts=-1, max_task_retries=3,
                max_concurrency=1000,
            ).remote(group, members, self.cfg, secrets)
            for group, members in groups.items()
        }
        # An actor found by name may have been created by another caller with fewer tools. Awaited
        # before the first call, not here: a blocking ray.get would stall an async actor's loop.
        self._registering = [self.actors[g].add_tools.remote(members, secrets) for g, members in groups.items()]
        self.actor_of = {s.name: self.actors[g] for g, members in groups.items() for s in members}

    async def call(self, name: str, arguments: Any) -> Observation:
        """Call a tool; ``arguments`` may be the model's raw Action Input text."""
        if name not in self.specs:
            available = ", ".join(self.specs)
            return Observation(name, False, f"Error: there is no API named {name!r}. Only these APIs exist: {available}",
                               "unknown_tool")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                return Observation(name, False, f"Error: the Action Input must be a JSON object ({e.msg})",
                                   "invalid_arguments")
        if not isinstance(arguments, dict):
            return Observation(name, False, "Error: the Action Input must be a JSON object", "invalid_arguments")
        await self._registered()
        return await self.actor_of[name].call.remote(name, arguments)

    async def _registered(self) -> None:
        if self._registering:
            await asyncio.gather(*self._registering)
            self._registering = []

    async def stats(self) -> dict[str, dict[str, Any]]:
        await self._registered()
        merged: dict[str, dict[str, Any]] = {}
        for part in await asyncio.gather(*(a.stats.remote() for a in self.actors.values())):
            merged.update(part)
        return merged

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor)
