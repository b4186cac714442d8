"""Which episode runs next, and on which actor.

Rules: every API is explored at once; within one API at most ``episodes_in_flight`` episodes run
together, and each starts with the long-term memory of every episode of its API finished before
it (rolling: a new one starts as soon as one finishes, with no wave barrier); across all APIs at
most ``max_in_flight`` run; a new episode goes to the actor with the fewest in flight. An episode
whose actor fails for good (after Ray's own retries) is reported, not retried here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import AsyncIterator

from ste_ray.explore.episode import EpisodeResult, EpisodeTask, MemoryEntry
from ste_ray.explore.settings import ExploreSettings


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
        self.pending = pending  # per API, the episode indices not started yet, in order
        self.memory = memory  # per API, the long-term memory built so far
        self.settings = settings
        self.in_flight_per_api = {api: 0 for api in pending}
        self.in_flight_per_actor = [0] * len(actors)
        self.running: dict[asyncio.Future, tuple[EpisodeTask, int]] = {}  # future -> (task, actor index)

    def _start_episodes(self, api: str) -> None:
        while (self.pending[api] and self.in_flight_per_api[api] < self.settings.episodes_in_flight
               and len(self.running) < self.settings.max_in_flight):
            task = EpisodeTask(self.run_id, api, self.pending[api].pop(0), list(self.memory.get(api, [])))
            actor_index = min(range(len(self.actors)), key=self.in_flight_per_actor.__getitem__)
            self.in_flight_per_actor[actor_index] += 1
            self.in_flight_per_api[api] += 1
            self.running[asyncio.ensure_future(self.actors[actor_index].run.remote(task))] = (task, actor_index)

    async def run(self) -> AsyncIterator[Finished]:
        """Run every pending episode; yield each as it finishes. The caller must have recorded a
        finished episode (and its memory, via ``remember``) before asking for the next."""
        for api in self.pending:
            self._start_episodes(api)
        while self.running:
            done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                task, actor_index = self.running.pop(future)
                self.in_flight_per_actor[actor_index] -= 1
                self.in_flight_per_api[task.api] -= 1
                try:
                    finished = Finished(task, future.result(), None)
                except Exception as e:  # after Ray's own retries: this episode failed for good
                    finished = Finished(task, None, e)
                yield finished
                # Its own API first, then any the global cap held back.
                for api in [task.api, *self.pending]:
                    self._start_episodes(api)

    def remember(self, api: str, entries: list[MemoryEntry]) -> None:
        self.memory.setdefault(api, []).extend(entries)
