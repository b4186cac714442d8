"""Tool sources: where the jobs' ``--tools`` find the tools to explore or evaluate. Each is a string,
or in YAML a mapping with the string as ``source`` and its own limits and secret:

    ste                      the STE benchmark APIs that have offline executors (the default)
    ste:FILE                 an STE/ToolBench API_descriptions.json (built-in executors where one has the name)
    builtin                  every built-in tool;  builtin:<category>  the built-ins of one category
    openai:FILE | FILE       an OpenAI-tools JSON/YAML file (``x-executor`` per tool)
    openapi:URL | openapi:FILE   an OpenAPI 3 document: one HTTP tool per operation (``servers`` honoured,
                             ``base_url`` overrides it)
    mcp:URL                  an MCP server over streamable HTTP;  mcp:COMMAND  an MCP server over stdio
    python:MODULE[:NAME]     the ``@tool`` functions of a module (or one function, or a list of them)

    tools:
      - ste
      - {source: "openapi:http://svc:8080/openapi.json", secret_env: SVC_KEY, limits: {rate_per_s: 5}}

A source that cannot be loaded (an unreachable URL, an MCP command that exits, a module without
tools) is a one-line ``ToolSpecError`` before any work starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import json
import shlex
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ste_ray.config import option
from ste_ray.tools.builtin import builtin_by_name, select_builtin, ste_offline_apis
from ste_ray.tools.calls import ToolLimitOverrides
from ste_ray.tools.loaders import from_callable, load_mcp, load_openai_tools, load_openapi, load_ste_apis
from ste_ray.tools.spec import ToolSpec, ToolSpecError

KINDS = ("ste", "builtin", "openai", "openapi", "mcp", "python")


@dataclasses.dataclass
class ToolSource:
    """One source of tools, with what applies to all of its tools."""

    source: str = option("ste", help="ste, ste:FILE, builtin[:category], openai:FILE, openapi:URL|FILE, mcp:URL|COMMAND, "
                                     "python:MODULE[:NAME]")
    secret_env: str = option("", help="Environment variable with the API key of an HTTP source (never logged)")
    base_url: str = option("", help="openapi: the server to call, instead of the document's servers[0]")
    limits: ToolLimitOverrides = option(default_factory=ToolLimitOverrides, help="Limits of every tool of the source")

    @classmethod
    def parse(cls, text: str) -> ToolSource:
        """A source written as one string (the CLI form)."""
        return cls(source=text)

    def __str__(self) -> str:
        return self.source

    @property
    def kind(self) -> str:
        head = self.source.split(":", 1)[0]
        return head if head in KINDS else "openai"

    @property
    def target(self) -> str:
        return self.source.split(":", 1)[1] if ":" in self.source and self.kind == self.source.split(":", 1)[0] else \
            ("" if self.source in KINDS else self.source)


def ste_api_descriptions_path() -> Path:
    """The STE descriptions of the APIs with offline executors, shipped with the package."""
    return Path(str(resources.files("ste_ray") / "data" / "ste_offline_apis.json"))


def _read_document(location: str) -> Any:
    """A JSON/YAML document from a URL or a file."""
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location, timeout=15) as response:
                return yaml.safe_load(response.read())
        except (urllib.error.URLError, OSError) as e:
            raise ToolSpecError(f"{location}: cannot fetch ({getattr(e, 'reason', e)})") from None
    path = Path(location)
    if not path.is_file():
        raise ToolSpecError(f"{location}: no such file")
    return yaml.safe_load(path.read_text())


def _python_tools(target: str) -> list[ToolSpec]:
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ToolSpecError(f"python:{target}: cannot import {module_name} ({e})") from None
    if name:
        if not hasattr(module, name):
            raise ToolSpecError(f"python:{target}: {module_name} has no {name!r}")
        found = getattr(module, name)
        functions = list(found) if isinstance(found, (list, tuple)) else [found]
    else:  # every function the module marked with @tool
        functions = [f for _, f in inspect.getmembers(module, inspect.isfunction)
                     if hasattr(f, "__ste_tool__") and f.__module__ == module.__name__]
    if not functions:
        raise ToolSpecError(f"python:{target}: no tools (mark functions with ste_ray.tools.loaders.tool, or name one)")
    return [from_callable(f) for f in functions]


def load_source(source: ToolSource) -> list[ToolSpec]:
    """The tools of one source (see the module docstring)."""
    kind, target = source.kind, source.target
    if kind == "ste":
        if not target:
            return ste_offline_apis(ste_api_descriptions_path())
        builtins = builtin_by_name()
        names = json.loads(Path(target).read_text()) if Path(target).is_file() else {}
        return load_ste_apis(target, executors={n: builtins[n].executor for n in names if n in builtins})
    if kind == "builtin":
        try:
            return select_builtin(categories=[target]) if target else select_builtin()
        except ValueError as e:
            raise ToolSpecError(f"{source.source}: {e}") from None
    if kind == "openapi":
        return load_openapi(_read_document(target), base_url=source.base_url, secret_env=source.secret_env,
                            where=target)
    if kind == "mcp":
        try:
            if target.startswith(("http://", "https://")):
                return asyncio.run(load_mcp(url=target))
            return asyncio.run(load_mcp(shlex.split(target)))
        except ToolSpecError:
            raise
        except Exception as e:  # the MCP SDK raises many kinds on a server that cannot start or answer
            while isinstance(e, BaseExceptionGroup):  # its task groups wrap the cause
                e = e.exceptions[0]
            raise ToolSpecError(f"{source.source}: cannot list the server's tools ({type(e).__name__}: {e})") from None
    if kind == "python":
        return _python_tools(target)
    return load_openai_tools(target)


def select_tools(sources: list[ToolSource | str], names: list[str]) -> tuple[list[ToolSpec], dict[str, ToolLimitOverrides]]:
    """The tools of ``sources``, keeping only ``names`` when given (an unknown name is an error), and
    the limits each source sets for its tools."""
    specs: dict[str, ToolSpec] = {}
    limits: dict[str, ToolLimitOverrides] = {}
    for source in sources:
        source = ToolSource.parse(source) if isinstance(source, str) else source
        for spec in load_source(source):
            if spec.name not in specs:
                specs[spec.name] = spec
                limits[spec.name] = source.limits
    if names:
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise ToolSpecError(f"apis: {', '.join(map(repr, unknown))} not among the selected tools "
                                f"({', '.join(specs)})")
        specs = {n: specs[n] for n in names}
    return list(specs.values()), {n: limits[n] for n in specs if any(
        v is not None for v in dataclasses.asdict(limits[n]).values())}
