"""The exploration driver: episodes for every API, scheduled onto exploration actors; finished
episodes are written to Parquet in shards (``ShardWriter``: by count or time, each shard's trials
first, then its episode rows, each file atomic), so that a killed run loses only its episodes in
flight and those waiting for their shard, and ``resume`` continues it, rebuilding the long-term
memory from what was written. Trials count only when their run also wrote their episode row
(``ste_ray.schema.finished_episodes``), so a resumed run neither loses nor duplicates an episode."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from ste_ray.client import Endpoint
from ste_ray.constrained import supports_structured_outputs
from ste_ray.explore.actor import ExplorerActor
from ste_ray.explore.episode import EpisodeResult, MemoryEntry, episode_id
from ste_ray.explore.scheduler import Scheduler
from ste_ray.explore.settings import ExploreSettings
from ste_ray.model import EMBEDDED_MODEL
from ste_ray.runs import OutputError
from ste_ray.runtime import terminal
from ste_ray.schema import Episode, Trial, finished_episodes, finished_trials, write_records
from ste_ray.storage import Location
from ste_ray.tools.calls import ACTOR_NAMESPACE, ToolCallConfig
from ste_ray.tools.spec import ToolSpec
from ste_ray.verify import answer_grounded, last_call_ran

logger = logging.getLogger(__name__)

# Verified beside claimed: "last call ran" and "grounded answer" are checked facts of each trial (see
# ste_ray.verify), "verified" both; "claimed" is the explorer's own Yes, and "claimed, not verified"
# the trials it called a success that are not verified.
SUMMARY_HEADERS = ["api", "episodes", "trials", "calls", "tool errors", "parse errors", "last call ran",
                   "grounded answer", "verified", "claimed (self-judged)", "claimed, not verified"]
COUNTS = ["trials", "calls", "tool_errors", "parse_errors", "last_call_ran", "grounded_answer", "verified", "claimed",
          "claimed_not_verified"]


class ShardWriter:
    """Finished episodes, buffered and written as one shard when ``max_episodes`` wait or the oldest
    has waited ``max_wait_s`` (checked as episodes finish: no timer), and at the end."""

    def __init__(self, output: Location, run_id: str, max_episodes: int, max_wait_s: float):
        self.output, self.run_id = output, run_id
        self.max_episodes, self.max_wait_s = max_episodes, max_wait_s
        self.buffer: list[EpisodeResult] = []
        self.oldest = 0.0
        self.shards = 0

    def add(self, result: EpisodeResult) -> None:
        if not self.buffer:
            self.oldest = time.monotonic()
        self.buffer.append(result)
        if len(self.buffer) >= self.max_episodes or time.monotonic() - self.oldest >= self.max_wait_s:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"{self.run_id}-{self.shards:05d}.parquet"
        # Trials first, the episode rows last: an episode row marks its trials as finished.
        write_records(self.output / "trials" / name, [t for r in self.buffer for t in r.trials], Trial)
        write_records(self.output / "episodes" / name, [r.episode for r in self.buffer], Episode)
        self.buffer, self.shards = [], self.shards + 1


@dataclasses.dataclass
class ExplorationResult:
    output: Location
    episodes_done: int  # finished in this run
    episodes_before: int  # already finished by an earlier run (resume)
    failures: list[dict[str, str]]
    elapsed_s: float
    completion_tokens: int
    summary: dict[str, dict[str, int]]  # per API and "total": see ``summarize``
    episodes_rerun: int = 0  # started again after their actor was lost (see scheduler.py)


def check_output(output: str | Path | Location, resume: bool) -> None:
    """Refuse to mix runs before any work starts."""
    output = Location.of(output)
    existing = finished_episodes(output)
    if existing and not resume:
        raise OutputError(f"output: {output} already holds {len(existing)} episodes; "
                          "pass --resume to continue that run, or choose another --output")


def load_progress(output: Location) -> tuple[set[str], dict[str, list[MemoryEntry]]]:
    """Episodes already finished, and the long-term memory they built (rebuilt on resume)."""
    finished = {key.split("/")[0] for key in finished_episodes(output)}
    memory: dict[str, list[MemoryEntry]] = {}
    trials = finished_trials(output).select(["api", "episode_index", "slot", "query", "success"])
    for row in sorted(trials.to_pylist(), key=lambda r: (r["episode_index"], r["slot"])):
        memory.setdefault(row["api"], []).append((row["query"], row["success"]))
    return finished, memory


def summarize(output: Location) -> dict[str, dict[str, int]]:
    """Per API (and "total"), what the finished episodes did: counts of ``COUNTS`` and episodes."""
    rows: dict[str, dict[str, Any]] = {}
    for t in finished_trials(output).to_pylist():
        steps = t["steps"] or []
        ran, grounded_answer = last_call_ran(steps), answer_grounded(steps, t["final_answer"])
        verified, claimed = ran and grounded_answer, bool(t["success"])
        r = rows.setdefault(t["api"], {"episodes": set(), **dict.fromkeys(COUNTS, 0)})
        r["episodes"].add(t["episode_id"])
        for key, value in (("trials", 1), ("calls", t["num_calls"]), ("tool_errors", t["num_tool_errors"]),
                           ("parse_errors", t["num_parse_errors"]), ("last_call_ran", ran),
                           ("grounded_answer", grounded_answer), ("verified", verified), ("claimed", claimed),
                           ("claimed_not_verified", claimed and not verified)):
            r[key] += int(value)
    summary = {api: {"episodes": len(r.pop("episodes")), **r} for api, r in rows.items()}
    if summary:
        summary["total"] = {key: sum(r[key] for r in summary.values()) for key in ["episodes", *COUNTS]}
    return summary


def summary_rows(summary: dict[str, dict[str, int]]) -> list[list[Any]]:
    """The closing table's rows (SUMMARY_HEADERS)."""
    return [[api, r["episodes"], r["trials"], r["calls"], r["tool_errors"], r["parse_errors"],
             *(f"{r[key]}/{r['trials']}" for key in ("last_call_ran", "grounded_answer", "verified", "claimed")),
             r["claimed_not_verified"]] for api, r in summary.items()]


def failing_calls_warning(summary: dict[str, dict[str, int]], model: str) -> str | None:
    """One line when most calls failed (or none was made), saying what to do about it."""
    total = summary.get("total")
    if not total or (total["calls"] and total["tool_errors"] * 2 <= total["calls"]):
        return None
    failed = f"{total['tool_errors']} of {total['calls']} calls ended in a tool error" if total["calls"] else \
        "no trial made a call"
    advice = ("the embedded 135M explorer is small: explore with the 1.5B teacher (--engine.model teacher), as "
              "jobs/pipeline.py does" if model == EMBEDDED_MODEL else "try a stronger explorer (--engine.model)")
    return f"warning: {failed}; {total['verified']} of {total['trials']} trials verified. {advice[0].upper()}{advice[1:]}."


async def run_exploration(endpoint: Endpoint, specs: list[ToolSpec], settings: ExploreSettings,
                          tool_cfg: ToolCallConfig, output: str | Path | Location, run_id: str,
                          progress: bool = True, imaginer: Endpoint | None = None,
                          earlier_rounds: list[str | Path | Location] = ()) -> ExplorationResult:
    """Explore every API of ``specs``: ``settings.num_episodes`` episodes each, minus those an
    earlier run already finished in ``output``. Writes each episode as soon as it finishes.
    ``imaginer`` writes the requests instead of the explorer (see episode.py); the long-term memory
    starts with the requests of ``earlier_rounds`` (exploration outputs), so that a new round
    explores other uses of each API."""
    started = time.perf_counter()
    output = Location.of(output)
    if settings.constrained:
        async with endpoint.client(max_retries=2) as probe:
            if not await supports_structured_outputs(probe):
                logger.warning("%s does not honour vLLM structured outputs: exploring unconstrained", endpoint.base_url)
                settings = dataclasses.replace(settings, constrained=False)
    finished, memory = load_progress(output)
    for earlier in reversed(earlier_rounds):
        for api, entries in load_progress(Location.of(earlier))[1].items():
            memory[api] = entries + memory.get(api, [])
    pending = {s.name: [i for i in range(settings.num_episodes) if episode_id(s.name, i) not in finished] for s in specs}
    total = settings.num_episodes * len(specs)
    before = total - sum(map(len, pending.values()))
    actor_cls = ray.remote(ExplorerActor)
    actors = [actor_cls.options(name=f"ste-explorer:{run_id}:{i}", namespace=ACTOR_NAMESPACE, num_cpus=0,
                                resources=settings.actor_resources,
                                max_restarts=-1, max_task_retries=2, max_concurrency=1000)
              .remote(endpoint, specs, tool_cfg, settings, 256, imaginer)
              for i in range(settings.num_actors)]
    bar = tqdm(total=total, initial=before, desc="episodes", unit="ep", disable=not progress, file=terminal())
    shards = ShardWriter(output, run_id, settings.shard_episodes, settings.shard_seconds)
    failures: list[dict[str, str]] = []
    failures_file = output / "failures.jsonl"
    earlier_failures = failures_file.read_text() if failures_file.exists() else ""
    done = tokens = calls = trials = verified = 0
    scheduler = Scheduler(actors, run_id, pending, memory, settings)
    try:
        async with contextlib.aclosing(scheduler.run()) as finished:
            async for finished_episode in finished:
                task, result = finished_episode.task, finished_episode.result
                if result is None:
                    error = finished_episode.error
                    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
                    failures.append({"episode_id": task.episode_id, "api": task.api, "reason": reason})
                    # Rewritten whole (object stores cannot append); failures are few.
                    failures_file.write_text(earlier_failures + "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures))
                else:
                    shards.add(result)
                    scheduler.remember(task.api, [(t.query, t.success) for t in result.trials])
                    calls += sum(t.num_calls for t in result.trials)
                    trials += len(result.trials)
                    verified += sum(last_call_ran(steps) and answer_grounded(steps, t.final_answer)
                                    for t in result.trials for steps in [[vars(s) for s in t.steps]])
                    tokens += result.episode.completion_tokens
                    done += 1
                elapsed = time.perf_counter() - started
                bar.update(1)
                bar.set_postfix_str(f"{tokens / elapsed:.0f} tok/s, {calls / elapsed:.2f} calls/s, "
                                    f"verified {verified}/{trials} trials, failed {len(failures)}")
    finally:
        shards.flush()
        bar.close()
        # Close the actors' HTTP sessions before killing them (else aiohttp warns of unclosed sessions);
        # one that does not close in time is killed all the same, its call cancelled, not left to fail.
        closing = asyncio.gather(*(actor.close.remote() for actor in actors), return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closing, timeout=10)
        for actor in actors:
            ray.kill(actor)
    return ExplorationResult(output, done, before, failures, time.perf_counter() - started, tokens, summarize(output),
                             sum(scheduler.reruns.values()))
