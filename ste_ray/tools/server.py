"""The tool server: the built-in tools (or any Python tools) over HTTP, one route per tool, with
an OpenAPI 3 document at ``/openapi.json`` that the OpenAPI loader reads back.

    POST /tools/{name}   JSON object of arguments → 200 result | 422 invalid arguments |
                         400 the tool refused the input | 404 unknown tool | 413 body too large
    GET  /tools          the specs as OpenAI tools JSON
    GET  /openapi.json   the OpenAPI document
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse

from aiohttp import web

from ste_ray.tools.spec import ToolInputError, ToolSpec

MAX_BODY_BYTES = 64 * 1024


def tool_path(name: str) -> str:
    return "/tools/" + urllib.parse.quote(name, safe="")


def openapi_document(specs: list[ToolSpec], server_url: str) -> dict:
    paths = {}
    for spec in specs:
        paths[tool_path(spec.name)] = {"post": {
            "operationId": spec.name,
            "summary": spec.description[:120],
            "description": spec.description,
            "tags": [spec.category],
            "requestBody": {"required": True, "content": {"application/json": {"schema": spec.parameters}}},
            "responses": {
                "200": {"description": "The tool's result (JSON)"},
                "400": {"description": "The tool cannot serve this input"},
                "422": {"description": "The arguments do not match the schema"},
            },
        }}
    return {"openapi": "3.1.0", "info": {"title": "ste-ray tools", "version": "1"},
            "servers": [{"url": server_url}], "paths": paths}


def make_app(specs: list[ToolSpec]) -> web.Application:
    by_name = {s.name: s for s in specs}

    async def call(request: web.Request) -> web.Response:
        spec = by_name.get(request.match_info["name"])
        if spec is None:
            return web.json_response({"error": f"no tool named {request.match_info['name']!r}"}, status=404)
        try:
            arguments = await request.json()
        except json.JSONDecodeError as e:
            return web.json_response({"error": f"the body must be a JSON object: {e.msg}"}, status=422)
        error = spec.argument_error(arguments)
        if error:
            return web.json_response({"error": error}, status=422)
        try:
            result = await asyncio.to_thread(spec.executor.function, **arguments)
        except ToolInputError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(result, dumps=lambda o: json.dumps(o, ensure_ascii=False, default=str))

    async def listing(request: web.Request) -> web.Response:
        return web.json_response([s.openai() for s in specs])

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi_document(specs, f"{request.scheme}://{request.host}"))

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/tools/{name}", call)
    app.router.add_get("/tools", listing)
    app.router.add_get("/openapi.json", openapi)
    return app


async def start_server(specs: list[ToolSpec], host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving; returns the runner (``await runner.cleanup()`` stops it) and the base URL."""
    runner = web.AppRunner(make_app(specs), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    return runner, f"http://{host}:{bound}"
