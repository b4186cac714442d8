"""The exploration driver: episodes for every API, scheduled onto exploration actors; finished
episodes are written to Parquet in shards (``ShardWriter``: by count or time, each shard's trials
first, then its episode rows, each file atomic), so that a killed run loses only its episodes in
flight and those waiting for their shard, and ``resume`` continues it, rebuilding the long-term
memory from what was written. Trials count only when their run also wrote their episode row
(``ste_ray.schema.finished_episodes``), so a resumed run neither loses nor duplicates an episode."""

from __future__ import annotations

import asyncio
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
from ste_ray.runs import OutputError
from ste_ray.runtime import terminal
from ste_ray.schema import Episode, Trial, finished_episodes, finished_trials, write_records
from ste_ray.storage import Location
from ste_ray.tools.calls import ACTOR_NAMESPACE, ToolCallConfig
from ste_ray.tools.spec import ToolSpec

logger = logging.getLogger(__name__)

SUMMARY_HEADERS = ["api", "episodes", "trials", "calls", "parse errors", "tool errors", "self-judged success"]


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
    per_api: list[list[Any]]  # rows of the closing table
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


def summarize(output: Location) -> list[list[Any]]:
    """The closing table: per API, what the finished episodes did."""
    rows: dict[str, dict[str, Any]] = {}
    for t in finished_trials(output).to_pylist():
        r = rows.setdefault(t["api"], {"episodes": set(), "trials": 0, "calls": 0, "parse": 0, "tool": 0, "yes": 0, "judged": 0})
        r["episodes"].add(t["episode_id"])
        r["trials"] += 1
        r["calls"] += t["num_calls"]
        r["parse"] += t["num_parse_errors"]
        r["tool"] += t["num_tool_errors"]
        if t["success"] is not None:
            r["judged"] += 1
            r["yes"] += int(t["success"])
    return [[api, len(r["episodes"]), r["trials"], r["calls"], r["parse"], r["tool"],
             f"{r['yes']}/{r['judged']}" if r["judged"] else "-"] for api, r in rows.items()]


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
    done = tokens = calls = judged = successes = 0
    scheduler = Scheduler(actors, run_id, pending, memory, settings)
    try:
        async for finished_episode in scheduler.run():
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
                judged += sum(t.success is not None for t in result.trials)
                successes += sum(bool(t.success) for t in result.trials)
                tokens += result.episode.completion_tokens
                done += 1
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix_str(f"{tokens / elapsed:.0f} tok/s, {calls / elapsed:.2f} calls/s, "
                                f"success {successes}/{judged}, failed {len(failures)}")
    finally:
        shards.flush()
        bar.close()
        # Close the actors' HTTP sessions before killing them (else aiohttp warns of unclosed sessions).
        await asyncio.wait([asyncio.ensure_future(actor.close.remote()) for actor in actors], timeout=10)
        for actor in actors:
            ray.kill(actor)
    return ExplorationResult(output, done, before, failures, time.perf_counter() - started, tokens, summarize(output),
                             sum(scheduler.reruns.values()))
