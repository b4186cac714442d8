"""python -m ste_ray.tools list [--json] | call NAME 'JSON_ARGS' | serve [--host H] [--port P]"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ste_ray.report import format_table
from ste_ray.tools.builtin import builtin_by_name, builtin_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ste_ray.tools", description="The built-in tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list the built-in tools")
    ls.add_argument("--json", action="store_true", help="print the specs as OpenAI tools JSON")
    call = sub.add_parser("call", help="call one tool through the tool-call actors (local Ray)")
    call.add_argument("name")
    call.add_argument("arguments", nargs="?", default="{}", help="the arguments as a JSON object")
    serve = sub.add_parser("serve", help="serve the built-in tools over HTTP (OpenAPI at /openapi.json)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)

    if args.command == "list":
        tools = builtin_tools()
        if args.json:
            print(json.dumps([t.openai() | {"x-category": t.category} for t in tools], indent=2, ensure_ascii=False))
        else:
            print(format_table(["tool", "category", "parameters"],
                               [[t.name, t.category, ", ".join(t.parameters["properties"])] for t in tools]))
        return 0
    if args.command == "call":
        return asyncio.run(_call(args.name, args.arguments))
    return asyncio.run(_serve(args.host, args.port))


async def _call(name: str, arguments: str) -> int:
    import ray

    from ste_ray.tools.calls import ToolBox

    tools = builtin_by_name()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        box = ToolBox(list(tools.values()))
        observation = await box.call(name, arguments)
    finally:
        ray.shutdown()
    print(observation.text)
    return 0 if observation.ok else 1


async def _serve(host: str, port: int) -> int:
    from ste_ray.tools.server import start_server

    runner, url = await start_server(list(builtin_tools()), host, port)
    print(f"serving {len(builtin_tools())} tools at {url} (OpenAPI: {url}/openapi.json); Ctrl-C to stop", flush=True)
    try:
        await asyncio.Event().wait()  # until cancelled by Ctrl-C
    finally:
        await runner.cleanup()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
