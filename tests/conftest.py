"""Shared fixtures. The real engine is expensive (about a minute to start on 2 cores), so one
engine serves the whole test session: a Ray instance of the tests' own (own temp dir, never the
user's cluster) with the embedded model deployed through ste_ray.engine, exactly as jobs do."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest
from aiohttp import web

from ste_ray.engine import EngineConfig, Endpoint, explorer_endpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Short path: Ray's Unix sockets live under the temp dir and paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-t", dir="/tmp")
    ray.init(num_cpus=8, include_dashboard=False, _temp_dir=temp_dir, logging_level="WARNING")
    yield temp_dir
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def engine_config() -> EngineConfig:
    return EngineConfig(port=free_port(), max_model_len=1024, cpu_kv_cache_gib=1.0,
                        cache_dir=os.environ.get("STE_RAY_CACHE", ""))


@pytest.fixture(scope="session")
def engine(ray_session, engine_config) -> Endpoint:
    """The embedded explorer, deployed once per test session the way jobs deploy it; at the end
    of the session the job-side teardown must have removed the application."""
    from ray import serve

    with explorer_endpoint(engine_config) as endpoint:
        yield endpoint
    assert engine_config.app_name not in serve.status().applications


@pytest.fixture
async def serve_app():
    """Serve aiohttp applications on loopback for the duration of a test: ``url = await serve_app(app)``."""
    runners = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    yield start
    for runner in runners:
        await runner.cleanup()
