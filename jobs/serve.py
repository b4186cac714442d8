"""Serving: the base model and fine-tuned models behind one OpenAI-compatible endpoint (Ray Serve,
vLLM); ``model="<name>"`` picks which answers. With no flags: the embedded model as ``ste-model``,
the endpoint other jobs attach to (``--engine.mode attach``).

    python jobs/serve.py --serve.models '{base: embedded, tuned: outputs/train}'      # local: serves until Ctrl-C
    python jobs/serve.py --ray.address auto --serve.models '{tuned: /shared/train}'   # a cluster: stays up detached
    STE_KEY=secret python jobs/serve.py --engine.host 0.0.0.0 --serve.api_key_env STE_KEY --block

Then any OpenAI client, or ``jobs/evaluate.py --model-url http://HOST:8000/v1 --model tuned``.
"""

import asyncio
import dataclasses
import signal

from ray import serve

from ste_ray.client import LLMError
from ste_ray.config import job_config, option
from ste_ray.engine import EngineConfig, EngineUnplaceable, check_endpoint
from ste_ray.model import ModelNotFoundError
from ste_ray.runtime import RayConfig, init_ray, run_job
from ste_ray.serve import ServeSettings, serve_models


@dataclasses.dataclass
class ServeConfig:
    """Serve the base model and fine-tuned models behind one OpenAI-compatible endpoint."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig,
                                  help="How each model is served (host, port, replicas, autoscaling, context)")
    serve: ServeSettings = option(default_factory=ServeSettings, help="What is served")
    block: bool = option(False, help="Hold the terminal until Ctrl-C (always, with a local Ray instance, which ends "
                                     "with this job); otherwise leave the application running in the cluster")


def main() -> None:
    cfg = job_config(ServeConfig)
    init_ray(cfg.ray)
    endpoint = serve_models(cfg.engine, cfg.serve)
    asyncio.run(check_endpoint(endpoint))
    print(f"serving {', '.join(cfg.serve.models)} at {endpoint.base_url}"
          + (f" (API key from ${cfg.serve.api_key_env})" if cfg.serve.api_key_env else ""))
    print(f"evaluate with: python jobs/evaluate.py --model-url {endpoint.base_url} --model {endpoint.model}")
    if cfg.ray.address and not cfg.block:
        print(f"left running as Serve application {cfg.engine.app_name!r}; stop it with `serve shutdown`")
        return
    # Masked only now: Ray's processes, started above, must keep their own signal handling.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print("serving; Ctrl-C to stop", flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    serve.delete(cfg.engine.app_name)


if __name__ == "__main__":
    run_job(main, expected=(LLMError, EngineUnplaceable, ModelNotFoundError))
