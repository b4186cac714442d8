"""Ray Serve LLM's initialization callback for the engine replicas (``LLMConfig.callback_config``),
run inside each replica before its engine starts."""

from __future__ import annotations

from ray.llm._internal.common.callbacks.base import CallbackBase


class LocalModel(CallbackBase):
    """For a model in a local directory: Ray Serve LLM's node initialization would run a task that
    downloads the model onto the replica's node, which for a local path does nothing but start a new
    worker process that imports torch and transformers (about 10 s of each engine start on 2 cores:
    benchmarks/bench_engine_start.py). The directory is where the model is, so that task is skipped."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False
