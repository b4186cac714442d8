"""The explorer engine for real: vLLM (CPU build) in Ray Serve with the embedded model, reached
through the shared client over the OpenAI protocol. One engine for the whole session (conftest)."""

from __future__ import annotations

import asyncio

import pytest

from ste_ray.client import Endpoint, LLMRequestError
from ste_ray.engine import EngineConfig, check_endpoint, model_endpoint
from ste_ray.config import ConfigError
from ste_ray.model import resolve_model

pytestmark = pytest.mark.engine

COUNT = [{"role": "user", "content": "Count from 1 to 30, separated by commas."}]


async def test_models_lists_the_served_model(engine: Endpoint):
    async with engine.client() as client:
        assert await client.models() == [engine.model]
    await check_endpoint(engine)


async def test_chat_returns_text_and_usage(engine: Endpoint, engine_config: EngineConfig):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    async with engine.client() as client:
        result = await client.chat(messages, max_tokens=24, temperature=0)
    assert result.text.strip()
    assert result.finish_reasons[0] in ("stop", "length")
    # Usage is the engine's real count: the prompt is the chat template applied to the messages,
    # and the completion re-tokenizes to (about) the reported number of tokens.
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(engine_config.model, engine_config.cache_dir or None))
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert result.usage["prompt_tokens"] == len(prompt_ids)
    completion = result.usage["completion_tokens"]
    assert 0 < completion <= 24
    assert abs(len(tokenizer.encode(result.text)) - completion) <= 2
    assert client.usage.completion_tokens == completion


async def test_stop_cuts_the_output(engine: Endpoint):
    async with engine.client() as client:
        free = await client.chat(COUNT, max_tokens=48, temperature=0)
        stopped = await client.chat(COUNT, max_tokens=48, temperature=0, stop=["5"])
    assert "5" in free.text, free.text  # the stop string does occur without the stop
    assert "5" not in stopped.text
    assert free.text.startswith(stopped.text)
    assert stopped.finish_reasons == ["stop"]
    assert stopped.usage["completion_tokens"] < free.usage["completion_tokens"]


async def test_n_and_seed(engine: Endpoint):
    prompt = [{"role": "user", "content": "Write a short, unusual name for a cat."}]
    async with engine.client() as client:
        many = await client.chat(prompt, n=4, temperature=1.0, max_tokens=12, seed=7)
        again = await client.chat(prompt, n=4, temperature=1.0, max_tokens=12, seed=7)
    assert len(many.texts) == 4 and all(t.strip() for t in many.texts)
    assert len(set(many.texts)) > 1  # four samples, not one answer repeated
    assert many.texts == again.texts  # a seed makes sampling reproducible
    assert many.usage["completion_tokens"] >= 4  # usage counts every choice


async def test_concurrent_requests(engine: Endpoint):
    async with engine.client(max_concurrency=16) as client:
        results = await asyncio.gather(*(
            client.chat([{"role": "user", "content": f"Say the number {i}."}], max_tokens=8, temperature=0)
            for i in range(16)
        ))
    assert all(r.text for r in results)
    assert client.usage.requests == 16


async def test_unknown_model_is_a_clear_4xx(engine: Endpoint):
    async with Endpoint(engine.base_url, "no-such-model").client(max_retries=0) as client:
        with pytest.raises(LLMRequestError) as info:
            await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert 400 <= info.value.status < 500
    with pytest.raises(ConfigError, match="not 'no-such-model'"):
        await check_endpoint(Endpoint(engine.base_url, "no-such-model"))


def test_attach_mode_reaches_the_running_engine(engine: Endpoint, engine_config: EngineConfig):
    attach = EngineConfig(mode="attach", port=engine_config.port)
    with model_endpoint(attach) as endpoint:
        assert endpoint.base_url == engine.base_url and endpoint.model == engine.model


def test_external_mode_reads_the_key_from_the_environment(engine: Endpoint, monkeypatch):
    monkeypatch.setenv("STE_TEST_KEY", "sk-secret")
    external = EngineConfig(mode="external", url=engine.base_url, model=engine.model, api_key_env="STE_TEST_KEY")
    with model_endpoint(external) as endpoint:
        assert endpoint.api_key == "sk-secret"
        assert "sk-secret" not in repr(endpoint)


def test_an_engine_the_cluster_cannot_hold_is_refused_with_what_is_missing(ray_session):
    from ste_ray.engine import EngineUnplaceable, check_placement

    check_placement(EngineConfig())  # the session's cluster (8 CPU slots) holds the default engine
    with pytest.raises(EngineUnplaceable, match=r"it needs 66 CPU .* the cluster has 8 CPU; .*--num-cpus 68"):
        check_placement(EngineConfig(cpus_per_replica=64))
    with pytest.raises(EngineUnplaceable, match="add GPU nodes, or use --engine.gpus_per_replica 0"):
        check_placement(EngineConfig(gpus_per_replica=1))
    # A resource only some node type offers (no node here has it, and no autoscaler watches).
    with pytest.raises(EngineUnplaceable, match=r"1 engine_node .* the cluster has .*0 engine_node"):
        check_placement(EngineConfig(resources_per_replica={"engine_node": 1}))


def test_replica_resources_go_into_the_replica_placement_group():
    from ste_ray.engine import build_llm_config

    config = build_llm_config(EngineConfig(resources_per_replica={"engine_node": 1}, max_replicas=3,
                                           upscale_delay_s=5, downscale_delay_s=20))
    assert config.placement_group_config["bundles"] == [{"CPU": 1.0, "engine_node": 1.0}]
    autoscaling = config.deployment_config["autoscaling_config"]
    assert (autoscaling["max_replicas"], autoscaling["upscale_delay_s"], autoscaling["downscale_delay_s"]) == (3, 5, 20)


def test_a_local_model_skips_serve_llms_node_initialization_and_a_remote_one_keeps_it(s3_uri):
    """A model in a local directory has nothing to download: its replicas skip the node-initialization
    task (one worker process fewer per engine start; benchmarks/bench_engine_start.py). A hub id or an
    object-storage directory is downloaded onto the replica's node by that task, as Serve LLM does."""
    from ray.llm._internal.common.callbacks.base import CallbackBase
    from ray.llm._internal.common.utils.import_utils import load_class

    from ste_ray.engine import build_llm_config

    local = build_llm_config(EngineConfig()).callback_config.callback_class
    callback = load_class(local)(llm_config=None)
    assert callback.ctx.run_init_node
    asyncio.run(callback.on_before_node_init())
    assert not callback.ctx.run_init_node
    for remote in ("HuggingFaceTB/SmolLM2-135M-Instruct", s3_uri("model")):
        assert build_llm_config(EngineConfig(model=remote)).callback_config.callback_class is CallbackBase


def test_a_cpu_engine_runs_in_bfloat16_only_where_the_cpu_has_bf16_kernels():
    """An AVX2-only CPU runs bf16 products in scalar code (about 6x slower than float32 here,
    benchmarks/bench_cpu_dtype.py): its engines run in float32. The CPU's own flags are the oracle."""
    from pathlib import Path

    from ste_ray.engine import engine_arguments
    from ste_ray.model import cpu_dtype

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or " avx2" not in cpuinfo.read_text():
        pytest.skip("an x86 CPU's flags are the oracle")
    flags = set(next(ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")).split(":")[1].split())
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert cpu_dtype() == "bfloat16"
    if not any(f.startswith("avx512") for f in flags):
        assert cpu_dtype() == "float32"
    assert engine_arguments(EngineConfig())["dtype"] == cpu_dtype()
    assert engine_arguments(EngineConfig(engine_kwargs={"dtype": "float16"}))["dtype"] == "float16"  # the user's choice wins
    assert "dtype" not in engine_arguments(EngineConfig(gpus_per_replica=1))  # a GPU takes the model's own
