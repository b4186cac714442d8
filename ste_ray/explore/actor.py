"""The exploration actor: an async Ray actor that runs many episodes at once, each in its own
coroutine, sharing one HTTP session to the model and the tool-call actors."""

from __future__ import annotations

from ste_ray.client import Endpoint
from ste_ray.explore.episode import EpisodeResult, EpisodeTask, run_episode
from ste_ray.explore.settings import ExploreSettings
from ste_ray.tools.calls import ToolBox, ToolCallConfig
from ste_ray.tools.spec import ToolSpec


class ExplorerActor:
    """Runs episodes (created with ``ray.remote``; Ray restarts it if it dies and reruns the
    episodes it had in flight)."""

    def __init__(self, endpoint: Endpoint, specs: list[ToolSpec], tool_cfg: ToolCallConfig, settings: ExploreSettings,
                 max_requests: int, imaginer: Endpoint | None = None):
        self.llm = endpoint.client(max_concurrency=max_requests)
        self.imaginer = imaginer.client(max_concurrency=max_requests) if imaginer else None
        self.tools = ToolBox(specs, tool_cfg)
        self.specs = {s.name: s for s in specs}
        self.settings = settings

    async def run(self, task: EpisodeTask) -> EpisodeResult:
        return await run_episode(self.llm, self.tools, self.specs[task.api], task, self.settings, self.imaginer)

    async def close(self) -> None:
        await self.llm.close()
        if self.imaginer:
            await self.imaginer.close()
