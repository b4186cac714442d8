"""Shared fixtures. The real engine is expensive (about a minute to start on 2 cores), so one
engine serves the whole test session: a Ray instance of the tests' own (own temp dir, never the
user's cluster) with the embedded model deployed through ste_ray.engine, exactly as jobs do."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp import web

from ste_ray.client import Endpoint
from ste_ray.engine import EngineConfig, model_endpoint

DATA = Path(__file__).with_name("data")


@functools.lru_cache(maxsize=1)
def ste_data() -> Path:
    """The STE repository's data the tests need beyond what the package ships (all 817 API
    descriptions, the paper's 22 prediction files; MIT, see LICENSE inside), unpacked once."""
    target = Path(tempfile.mkdtemp(prefix="ste-data-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)  # read at collection, before any fixture
    with tarfile.open(DATA / "ste.tar.xz") as archive:
        archive.extractall(target, filter="data")
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(temp_dir: str, log_path: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``ray start --head --block`` with its own temp dir, in its own process group, on ports that no
    other cluster's defaults use; returns once the cluster is up."""
    ports = {"--port": free_port(), "--ray-client-server-port": free_port(), "--dashboard-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--metrics-export-port": free_port()}
    with log_path.open("w") as log:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 "--temp-dir", temp_dir, "--disable-usage-stats",
                                 *(str(a) for kv in ports.items() for a in kv), *flags],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 90
    while not Path(temp_dir, "ray_current_cluster").exists():
        assert head.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "ray start --head did not come up"
        time.sleep(0.5)
    return head


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 15) -> None:
    """Stop a process started with ``start_new_session`` and everything in its process group: ``sig``
    first, SIGKILL if it has not ended within ``timeout_s``."""
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_head(head: subprocess.Popen) -> None:
    """Kill every process of a cluster started by ``start_head`` (they share its process group);
    never `ray stop`, which stops every Ray cluster on the host."""
    stop_group(head)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """The tests' own Ray cluster, started as users start one (`ray start --head`), on ports and in a
    temp dir of its own, so that the default ports stay free for the clusters the README starts."""
    import ray
    from ray import serve

    # Short path: Ray's Unix sockets live under the temp dir and paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-t", dir="/tmp")
    # Without token authentication, as the test process connects: `ray start` would turn it on
    # whenever ~/.ray/auth_token exists (a README cluster test creates one).
    head = start_head(temp_dir, tmp_path_factory.mktemp("ray") / "ray-start.log", "--num-cpus", "8",
                      "--include-dashboard", "false", env={"RAY_AUTH_MODE": "disabled"})
    try:
        ray.init(address=Path(temp_dir, "ray_current_cluster").read_text().strip(), logging_level="WARNING")
        yield temp_dir
        serve.shutdown()
        ray.shutdown()
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_uri():
    """A function from a prefix to an s3:// URI on moto's S3-compatible server on loopback (a real
    HTTP server speaking the S3 API, reached by pyarrow's own S3 client: the code path a cluster takes
    to real S3, with only the endpoint changed in the URI). The bucket is made on first write."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # Credentials in the URI (user:password@): Ray Data's workers read with the filesystem object, which carries them.
    options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1&allow_bucket_creation=true"
    yield lambda prefix: f"s3://key:secret@ste-ray/{prefix}?{options}"
    server.stop()


@pytest.fixture(scope="session")
def engine_config() -> EngineConfig:
    return EngineConfig(port=free_port(), max_model_len=2048, cpu_kv_cache_gib=1.0,
                        cache_dir=os.environ.get("STE_RAY_CACHE", ""))


@pytest.fixture(scope="session")
def engine(ray_session, engine_config) -> Endpoint:
    """The embedded explorer, deployed once per test session the way jobs deploy it; at the end
    of the session the job-side teardown must have removed the application."""
    from ray import serve

    with model_endpoint(engine_config) as endpoint:
        yield endpoint
    assert engine_config.app_name not in serve.status().applications


@pytest.fixture
async def serve_app():
    """Serve aiohttp applications on loopback for the duration of a test: ``url = await serve_app(app)``."""
    runners = []

    async def start(app: web.Application) -> str:
        # A test's hanging handler is cancelled at teardown, not waited for (aiohttp waits 60 s).
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    yield start
    for runner in runners:
        await runner.cleanup()
