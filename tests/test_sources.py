"""Tool sources from the jobs' command line: OpenAPI from a URL (ste-ray's own tool server) and from a
file, MCP over stdio and over streamable HTTP, a Python module; per-source limits; one-line errors
for sources that cannot be loaded; and an exploration of all three kinds from the CLI, on the real
engine, whose calls are really executed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from ste_ray.config import from_dict, option
from ste_ray.schema import Trial, read_records
from ste_ray.tools.builtin import builtin_tools
from ste_ray.tools.calls import ToolLimitOverrides
from ste_ray.tools.server import make_app, openapi_document
from ste_ray.tools.sources import ToolSource, select_tools
from ste_ray.tools.spec import ToolSpecError
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
MCP_STDIO = f"mcp:{sys.executable} {ROOT / 'tests' / 'mcp_unit_server.py'}"


@pytest.fixture
def mcp_http():
    """The test MCP server over streamable HTTP, in a subprocess."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "mcp_unit_server.py"), "http", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while True:
        try:
            select_tools([f"mcp:{url}"], [])
            break
        except ToolSpecError:
            assert time.monotonic() < deadline and server.poll() is None, "the MCP HTTP server did not start"
            time.sleep(0.3)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(10)


async def test_every_kind_of_source_loads(serve_app, mcp_http, tmp_path):
    url = await serve_app(make_app(list(builtin_tools())))
    # In a thread: the tool server answers from this test's event loop.
    from_url, _ = await asyncio.to_thread(select_tools, [f"openapi:{url}/openapi.json"], ["add_date"])
    assert from_url[0].executor.base_url == url and from_url[0].executor.kind == "http"
    document = tmp_path / "openapi.yaml"
    document.write_text(yaml.safe_dump(openapi_document(list(builtin_tools()), "http://example.invalid")))
    overridden, _ = select_tools([ToolSource(f"openapi:{document}", base_url=url)], ["add_date"])
    assert overridden[0].executor.base_url == url  # base_url overrides the document's servers
    stdio, _ = await asyncio.to_thread(select_tools, [MCP_STDIO], [])  # MCP loading runs its own event loop
    http, _ = await asyncio.to_thread(select_tools, [f"mcp:{mcp_http}"], [])
    assert {s.name for s in stdio} == {s.name for s in http} == {"celsius_to_fahrenheit", "word_count"}
    assert http[0].executor.mcp_url == mcp_http and stdio[0].executor.mcp_command[0] == sys.executable
    module, _ = select_tools(["python:tests.python_tools"], [])
    assert {s.name for s in module} == {"multiply", "shout"}
    one, _ = select_tools(["python:tests.python_tools:multiply"], [])
    assert [s.name for s in one] == ["multiply"]
    ste, _ = select_tools(["ste"], [])
    assert len(ste) == 10


async def test_a_relative_server_is_resolved_against_the_documents_url(serve_app):
    doc = openapi_document(list(builtin_tools())[:1], "/")
    app = web.Application()
    app.router.add_get("/openapi.json", lambda request: web.json_response(doc))
    url = await serve_app(app)
    specs, _ = await asyncio.to_thread(select_tools, [f"openapi:{url}/openapi.json"], [])
    assert specs[0].executor.base_url == url


@dataclasses.dataclass
class Job:
    tools: list[ToolSource] = option(default_factory=lambda: [ToolSource("ste")], help="sources")


def test_sources_carry_limits_and_secrets_from_yaml():
    job = from_dict(Job, {"tools": ["builtin:datetime", {"source": "python:tests.python_tools", "secret_env": "K",
                                                          "limits": {"rate_per_s": 2}}]})
    assert job.tools[0].source == "builtin:datetime" and job.tools[1].limits == ToolLimitOverrides(rate_per_s=2)
    specs, limits = select_tools(job.tools, [])
    assert limits == {"multiply": ToolLimitOverrides(rate_per_s=2), "shout": ToolLimitOverrides(rate_per_s=2)}


@pytest.mark.parametrize("source, message", [
    ("openapi:http://127.0.0.1:9/openapi.json", "cannot fetch"),
    (f"mcp:{sys.executable} -c 'raise SystemExit(3)'", "cannot list the server's tools"),
    ("python:json", "python:json: no tools"),
    ("python:no_such_module_here", "cannot import"),
    ("openapi:/no/such/file.yaml", "no such file"),
])
def test_a_source_that_cannot_be_loaded_is_a_one_line_job_error(source, message):
    result = subprocess.run([sys.executable, "jobs/explore.py", "--tools", source], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]


@pytest.mark.engine
async def test_explore_an_openapi_service_an_mcp_server_and_a_python_module_from_the_cli(
        engine, engine_config, serve_app, mcp_http, tmp_path):
    url = await serve_app(make_app(list(builtin_tools())))
    sources = [f"openapi:{url}/openapi.json", MCP_STDIO, f"mcp:{mcp_http}", "python:tests.python_tools"]
    apis = ["add_date", "celsius_to_fahrenheit", "multiply"]
    args = [sys.executable, "jobs/explore.py", "--engine.mode", "attach", "--engine.port", str(engine_config.port),
            "--tools", json.dumps(sources), "--apis", ",".join(apis), "--output", str(tmp_path / "out"),
            "--explore.num_episodes", "1", "--explore.num_stm_slots", "1", "--explore.max_turn", "1",
            "--explore.turn_max_tokens", "128", "--ray.include_dashboard", "false"]
    # In a thread: the OpenAPI service answers from this test's event loop. PYTHONPATH: the module's
    # functions run in Ray's tool actors, which import it.
    result = await asyncio.to_thread(subprocess.run, args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    trials = read_records(tmp_path / "out" / "trials", Trial)
    assert {t.api for t in trials} == set(apis)
    for t in trials:
        calls = [s for s in t.steps if s.action]
        assert calls, t  # call_first: every trial called its tool
        # Executed by the tool itself (a result, or the tool's own refusal), never lost in transport.
        assert all(s.tool_error_kind in (None, "tool_error", "http_4xx", "invalid_arguments") for s in calls), calls
    mcp_results = [s.observation for t in trials if t.api == "celsius_to_fahrenheit" for s in t.steps
                   if s.tool_error_kind is None]
    assert all("result" in json.loads(o) for o in mcp_results)
