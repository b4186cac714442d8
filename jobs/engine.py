"""Run a model endpoint (the embedded model by default) as a long-lived Ray Serve application that
other jobs attach to.

    python jobs/engine.py                      # local Ray; serves until Ctrl-C
    python jobs/engine.py --ray.address auto --detach    # deploy onto a running cluster and exit

Other jobs then use it with ``--engine.mode attach`` (same host/port) instead of starting their own.
"""

import asyncio
import dataclasses
import signal

from ray import serve

from ste_ray.client import LLMError
from ste_ray.config import fail, job_config, option
from ste_ray.engine import EngineConfig, EngineUnplaceable, check_endpoint, deploy
from ste_ray.model import ModelNotFoundError
from ste_ray.runtime import RayConfig, init_ray, run_job


@dataclasses.dataclass
class EngineJobConfig:
    """Start a model engine (vLLM in Ray Serve, OpenAI protocol) and keep it running."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig, help="The engine")
    detach: bool = option(False, help="Leave the application running in the cluster and exit")

    def validate(self) -> None:
        if self.engine.mode != "start":
            fail("engine.mode", "this job starts the engine; mode must be 'start'")
        if self.detach and not self.ray.address:
            fail("detach", "needs --ray.address (a local Ray instance ends with this job)")


def main() -> None:
    cfg = job_config(EngineJobConfig)
    init_ray(cfg.ray)
    endpoint = deploy(cfg.engine)
    asyncio.run(check_endpoint(endpoint))
    print(f"engine serving {endpoint.model!r} at {endpoint.base_url}")
    print(f"attach with: --engine.mode attach --engine.url {endpoint.base_url}")
    if cfg.detach:
        return
    # Masked only now: Ray's processes, started above, must keep their own signal handling.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print("serving; Ctrl-C to stop", flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    serve.delete(cfg.engine.app_name)


if __name__ == "__main__":
    run_job(main, expected=(LLMError, EngineUnplaceable, ModelNotFoundError))
