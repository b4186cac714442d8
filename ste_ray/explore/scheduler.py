"""Which episode runs next, and on which actor.

Rules: every API is explored at once; within one API at most ``episodes_in_flight`` episodes run
together, and each starts with the long-term memory of every episode of its API finished before
it (rolling: a new one starts as soon as one finishes, with no wave barrier); across all APIs at
most ``max_in_flight`` run; a new episode goes to the actor with the fewest in flight. An episode
whose actor was lost (its process or its node died) is started again on the restarted actor, with
backoff, for up to ``RERUN_WITHIN_S`` after the first loss: until Ray notices a dead node (seconds)
and the autoscaler replaces it (minutes on a cloud), calls to the actor fail at once as
"temporarily unavailable". The lost attempt wrote nothing, so nothing is duplicated. Any other
failure of an episode is reported, not retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from typing import AsyncIterator

from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

from ste_ray.explore.episode import EpisodeResult, EpisodeTask, MemoryEntry
from ste_ray.explore.settings import ExploreSettings
from ste_ray.retry import backoff_delay

ACTOR_LOST = (RayActorError, NodeDiedError, WorkerCrashedError)
RERUN_WITHIN_S = 600.0  # an episode whose actor is still lost this long after its first loss is reported
RERUN_BACKOFF_S = (0.5, 15.0)  # first and longest wait before starting it again


@dataclasses.dataclass
class Finished:
    task: EpisodeTask
    result: EpisodeResult | None  # None when the episode failed for good
    error: BaseException | None


class Scheduler:
    def __init__(self, actors: list, run_id: str, pending: dict[str, list[int]], memory: dict[str, list[MemoryEntry]],
                 settings: ExploreSettings):
        self.actors = actors
        self.run_id = run_id
        self.pending = {api: deque(indices) for api, indices in pending.items()}  # per API, not started yet, in order
        self.memory = memory  # per API, the long-term memory built so far
        self.settings = settings
        self.in_flight_per_api = {api: 0 for api in pending}
        self.in_flight_per_actor = [0] * len(actors)
        self.running: dict[asyncio.Future, tuple[EpisodeTask, int]] = {}  # future -> (task, actor index)
        # APIs that could start an episode now (pending work, under their own cap), in turn: the
        # driver never scans every API when one episode finishes (ToolBench has 16,000 of them).
        self.ready = deque(api for api, indices in self.pending.items() if indices)
        self.is_ready = set(self.ready)
        self.reruns: dict[str, int] = {}  # episode id -> times it was started again after its actor was lost
        self.first_lost: dict[str, float] = {}  # episode id -> when its actor was first lost

    def _can_start(self, api: str) -> bool:
        return bool(self.pending[api]) and self.in_flight_per_api[api] < self.settings.episodes_in_flight

    def _start(self, api: str) -> None:
        task = EpisodeTask(self.run_id, api, self.pending[api].popleft(), list(self.memory.get(api, [])))
        self._submit(task, min(range(len(self.actors)), key=self.in_flight_per_actor.__getitem__))

    def _submit(self, task: EpisodeTask, actor_index: int, delay_s: float = 0.0) -> None:
        self.in_flight_per_actor[actor_index] += 1
        self.in_flight_per_api[task.api] += 1
        self.running[asyncio.ensure_future(self._run_on(actor_index, task, delay_s))] = (task, actor_index)

    async def _run_on(self, actor_index: int, task: EpisodeTask, delay_s: float) -> EpisodeResult:
        if delay_s:
            await asyncio.sleep(delay_s)  # backoff: Ray gives no event for an actor that is back
        return await self.actors[actor_index].run.remote(task)

    def _fill(self) -> None:
        """Start episodes, one API at a time in turn, while the global cap allows."""
        while self.ready and len(self.running) < self.settings.max_in_flight:
            api = self.ready.popleft()
            self._start(api)
            if self._can_start(api):
                self.ready.append(api)
            else:
                self.is_ready.discard(api)

    async def run(self) -> AsyncIterator[Finished]:
        """Run every pending episode; yield each as it finishes. The caller must have recorded a
        finished episode (and its memory, via ``remember``) before asking for the next."""
        self._fill()
        try:
            while self.running:
                done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    task, actor_index = self.running.pop(future)
                    self.in_flight_per_actor[actor_index] -= 1
                    self.in_flight_per_api[task.api] -= 1
                    try:
                        finished = Finished(task, future.result(), None)
                    except ACTOR_LOST as e:
                        first = self.first_lost.setdefault(task.episode_id, time.monotonic())
                        if time.monotonic() - first < RERUN_WITHIN_S:
                            attempt = self.reruns.get(task.episode_id, 0)
                            self.reruns[task.episode_id] = attempt + 1
                            self._submit(task, actor_index, backoff_delay(attempt, *RERUN_BACKOFF_S))
                            continue
                        finished = Finished(task, None, e)
                    except Exception as e:  # after Ray's own retries: this episode failed for good
                        finished = Finished(task, None, e)
                    yield finished
                    self._mark_ready(task.api)
                    self._fill()
        finally:
            await self._abandon_running()

    async def _abandon_running(self) -> None:
        """When the caller stops early (cancelled, or an error of its own), the episodes still in
        flight are abandoned: cancelled and awaited here. Left alone, each would fail once its actor
        is killed, and asyncio would log the unretrieved error from a finalizer at whatever moment
        the garbage collector runs — inside an ``ast.parse`` of unrelated code, on CPython 3.11,
        that log's traceback formatting corrupts the parser's recursion count (SystemError)."""
        for future in self.running:
            future.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
        self.running.clear()

    def _mark_ready(self, api: str) -> None:
        if self._can_start(api) and api not in self.is_ready:
            # Its own API first: the next episode starts with the memory just recorded.
            self.ready.appendleft(api)
            self.is_ready.add(api)

    def remember(self, api: str, entries: list[MemoryEntry]) -> None:
        self.memory.setdefault(api, []).extend(entries)
