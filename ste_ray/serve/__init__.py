"""Serving: Ray Serve hosts the base model and the fine-tuned ones behind one OpenAI-compatible
endpoint; ``model="<name>"`` in a request picks which answers.

Locally each fine-tuned model is served whole (``servable_model``): after full fine-tuning its
model, after LoRA merged (the adapter folded into the base weights by ``jobs/train.py --train.merge``,
or here), one vLLM engine per name: Ray Serve LLM loads LoRA adapters dynamically only from cloud
storage (``s3://``, ``gs://``, Azure), never from a local directory, and a merged model also carries
any toolkens' new embeddings, which vLLM's LoRA does not. On a cluster with adapters in object
storage, ``adapters_uri`` serves every adapter under it from one engine instead
(``model="<base>:<adapter>"``). A training output on object storage (``s3://...``) is served from
there: each replica downloads the model to its own node.

An API key (``api_key_env``: the name of an environment variable the ingress replicas see) makes
every route answer 401 without ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ste_ray.client import Endpoint
from ste_ray.config import fail, option
from ste_ray.engine import EngineConfig, deploy
from ste_ray.model import resolve_model
from ste_ray.storage import Location
from ste_ray.train.run import WEIGHTS_DIRS, merge_adapter


@dataclasses.dataclass
class ServeSettings:
    """What is served, under which names."""

    models: dict[str, str] = option(
        default_factory=lambda: {"ste-model": "embedded"},
        help="Served name → model: 'embedded', 'teacher', a Hugging Face directory (a merged fine-tuned model), "
        "or a training output directory or s3:// URI (its merged/ model, merged now if missing)")
    adapters_uri: str = option(
        "", help="Cluster: s3://, gs:// or azure:// directory of LoRA adapters, served on the first model as "
        "'<name>:<adapter>'")
    api_key_env: str = option("", help="Environment variable holding the API key clients must send; empty: none "
                                       "(the endpoint binds loopback by default)")

    def validate(self) -> None:
        if not self.models:
            fail("models", "needs at least one model")
        if self.adapters_uri and not self.adapters_uri.startswith(("s3://", "gs://", "abfss://", "azure://")):
            fail("adapters_uri", f"must be object storage (s3://, gs://, azure://), got {self.adapters_uri!r}")


def servable_model(source: str) -> str:
    """What vLLM loads for a served model: for a training output directory (local or a URI), its
    whole fine-tuned model (``model/``) after full fine-tuning, else its merged model (made now from
    its adapter if training did not merge); anything else as given."""
    if "://" not in source and not Path(source).is_dir():
        return source  # 'embedded', 'teacher', a hub id
    output = Location.of(source)
    adapter = output / WEIGHTS_DIRS["lora"]
    if not (adapter / "adapter_config.json").is_file():
        full = output / WEIGHTS_DIRS["full"]
        return full.uri() if (full / "config.json").is_file() else source
    if not (output / "merged" / "config.json").is_file():
        staging = output.staging_dir("train")
        local_adapter = adapter.download(staging / WEIGHTS_DIRS["lora"])
        merge_adapter(local_adapter, resolve_model(adapter_base(local_adapter)), staging / "merged")
        (output / "merged").upload(staging / "merged")
    return (output / "merged").uri()


def adapter_base(adapter: Path) -> str:
    """The base model an adapter was trained from (the packaged student when PEFT recorded a local
    path that no longer exists)."""
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
    return base if base and Path(base).is_dir() else "embedded"


def serve_models(engine: EngineConfig, settings: ServeSettings, route_prefix: str = "/") -> Endpoint:
    """Deploy every model of ``settings`` on one endpoint (Ray must be connected; ``route_prefix``
    as for ``deploy``); returns the endpoint, asking for the first model."""
    models = {name: servable_model(source) for name, source in settings.models.items()}
    # By name: the ingress module imports vLLM's serving layer, which only the replicas need.
    ingress: dict[str, Any] = {"ingress_cls": "ste_ray.serve.ingress:KeyedIngress",
                               "ingress_extra_kwargs": {"api_key_env": settings.api_key_env}}
    if settings.adapters_uri:
        engine = dataclasses.replace(engine, engine_kwargs={**engine.engine_kwargs, "enable_lora": True})
    endpoint = deploy(engine, models, ingress, lora_uri=settings.adapters_uri, route_prefix=route_prefix)
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    return Endpoint(endpoint.base_url, endpoint.model, api_key=key)
