"""Loaders: every way a user can describe tools becomes a list of ``ToolSpec``.

(a) OpenAI ``tools`` JSON/YAML; (b) the STE/ToolBench ``API_descriptions.json`` layout;
(c) an OpenAPI 3 document (one tool per operation); (d) Python callables (schema from type hints
and the docstring); (e) an MCP server (stdio or streamable HTTP). Invalid input fails here, at
load time, with the file and the field named.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import yaml

from ste_ray.storage import Location
from ste_ray.tools.spec import Executor, ToolSpec, ToolSpecError

# ---------------------------------------------------------------------------------------------
# (a) OpenAI tools JSON / YAML


def load_openai_tools(path: str | Path | Location, executor: Executor | None = None) -> list[ToolSpec]:
    """A list of ``{"type": "function", "function": {name, description, parameters}}`` (or a
    mapping with a ``tools`` list). Executors: the one given, or per tool an ``x-executor``
    mapping beside ``function`` (``{kind: http, base_url: ..., path: ...}``). ``x-category`` and
    ``x-ste-description`` (the text the STE prompts show, see ``ToolSpec.record``) are kept."""
    path = Location.of(path)
    data = _read_structured(path)
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if not isinstance(data, list):
        raise ToolSpecError(f"{path}: expected a list of tools (or a mapping with 'tools')")
    specs = []
    for i, item in enumerate(data):
        where = f"{path}: tools[{i}]"
        if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(item.get("function"), dict):
            raise ToolSpecError(f"{where}: expected {{'type': 'function', 'function': {{...}}}}")
        fn = item["function"]
        if not fn.get("name"):
            raise ToolSpecError(f"{where}.function.name: missing")
        where = f"{path}: tool {fn['name']!r}"
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        tool_executor = executor
        if "x-executor" in item:
            try:
                tool_executor = Executor(**_executor_fields(item["x-executor"]))
            except (TypeError, ToolSpecError) as e:
                raise ToolSpecError(f"{where}: x-executor: {e}") from None
        specs.append(_make(where, name=fn["name"], description=fn.get("description", ""),
                           parameters=params, executor=tool_executor, category=item.get("x-category", "general"),
                           source_text=item.get("x-ste-description", "")))
    return _unique(specs, str(path))


def _executor_fields(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ToolSpecError("must be a mapping")
    fields = dict(raw)
    for key in ("query_params", "path_params", "body_params", "mcp_command"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return fields


# ---------------------------------------------------------------------------------------------
# (b) STE / ToolBench API descriptions

STE_TYPES = {
    "STRING": "string", "ENUM": "string", "NUMBER": "number", "INTEGER": "integer", "INT": "integer",
    "FLOAT": "number", "BOOLEAN": "boolean", "BOOL": "boolean", "ARRAY": "array", "LIST": "array",
    "OBJECT": "object", "DATE (YYYY-MM-DD)": "string", "TIME (24-HOUR HH:MM)": "string",
    "GEOPOINT (LATITUDE, LONGITUDE)": "string",
}
# BMTools-style descriptions state their arguments inline: (args json schema): {{"date" : string, ...}}
BMTOOLS_ARGS = re.compile(r"args json schema\)?:\s*\{\{(.*?)\}\}", re.S)


def load_ste_apis(
    path: str | Path, names: list[str] | None = None, executors: dict[str, Executor] | None = None
) -> list[ToolSpec]:
    """``{api_name: description}`` where a description is either ToolBench JSON text
    (description, required_parameters, optional_parameters, parent tool) or BMTools prose with an
    inline ``args json schema``. The STE text is kept verbatim for the explorer's prompt."""
    path = Path(path)
    data = _read_structured(path)
    if not isinstance(data, dict):
        raise ToolSpecError(f"{path}: expected a mapping of API name to description")
    if names is not None:
        missing = [n for n in names if n not in data]
        if missing:
            raise ToolSpecError(f"{path}: no API named {', '.join(map(repr, missing))}")
        data = {n: data[n] for n in names}
    executors = executors or {}
    return [ste_api_spec(name, text, f"{path}: {name!r}", executors.get(name)) for name, text in data.items()]


def ste_api_spec(name: str, text: Any, where: str, executor: Executor | None = None) -> ToolSpec:
    if not isinstance(text, str):
        raise ToolSpecError(f"{where}: the description must be a string")
    parsed = None
    if text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise ToolSpecError(f"{where}: description looks like JSON but does not parse: {e}") from None
    parent = name.split("%%", 1)[0] if "%%" in name else ""
    if parsed is None:  # BMTools prose
        properties: dict[str, Any] = {}
        match = BMTOOLS_ARGS.search(text)
        if match:
            for part in match.group(1).split(","):
                if ":" in part:
                    key, typ = (s.strip().strip('"') for s in part.split(":", 1))
                    properties[key] = {"type": STE_TYPES.get(typ.upper(), "string")}
        params = {"type": "object", "properties": properties, "required": list(properties)}
        return _make(where, name=name, description=text, parameters=params, executor=executor,
                     parent=parent, source_text=text)
    if not isinstance(parsed, dict):
        raise ToolSpecError(f"{where}: description JSON must be an object")
    properties, required = {}, []
    for group in ("required_parameters", "optional_parameters"):
        entries = parsed.get(group, [])
        if not isinstance(entries, list):
            raise ToolSpecError(f"{where}: {group}: must be a list")
        for j, p in enumerate(entries):
            if not isinstance(p, dict) or not p.get("name"):
                raise ToolSpecError(f"{where}: {group}[{j}].name: missing")
            typ = str(p.get("type", "STRING")).upper()
            schema: dict[str, Any] = {"type": STE_TYPES.get(typ, "string")}
            default_type = {bool: "boolean", int: "integer", float: "number"}.get(type(p.get("default")))
            if default_type and schema["type"] == "string":
                # The data's own default contradicts its declared type (e.g. STRING with default
                # true); accept both, as the benchmark's ground-truth calls use the default's type.
                schema["type"] = ["string", default_type]
            if p.get("description"):
                schema["description"] = p["description"]
            if p.get("default") not in (None, ""):
                schema["default"] = p["default"]
            properties[p["name"]] = schema
            if group == "required_parameters":
                required.append(p["name"])
    return _make(
        where, name=name, description=parsed.get("description", ""),
        parameters={"type": "object", "properties": properties, "required": required},
        executor=executor, parent=parsed.get("parent_tool_name", parent),
        parent_description=parsed.get("parent_tool_description", ""), source_text=text,
    )


# ---------------------------------------------------------------------------------------------
# (c) OpenAPI 3


def load_openapi(source: str | Path | dict, base_url: str = "", secret_env: str = "",
                 secret_header: str = "Authorization", where: str = "") -> list[ToolSpec]:
    """One tool per operation: name = operationId, parameters = path and query parameters plus
    the JSON request body's properties. The document's first server is where calls go (a relative
    one is resolved against ``where``, the document's own URL); ``base_url`` overrides it."""
    doc = source if isinstance(source, dict) else _read_structured(Path(source))
    where = where or ("openapi document" if isinstance(source, dict) else str(source))
    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3"):
        raise ToolSpecError(f"{where}: openapi: expected an OpenAPI 3 document")
    servers = doc.get("servers") or [{}]
    server = servers[0].get("url", "")
    base = base_url or (urllib.parse.urljoin(where, server) if where.startswith(("http://", "https://")) else server)
    if not base.startswith(("http://", "https://")):
        raise ToolSpecError(f"{where}: servers[0].url: need an absolute http(s) URL (or pass base_url)")
    specs = []
    for route, item in (doc.get("paths") or {}).items():
        for method, op in item.items():
            if method.lower() not in ("get", "post", "put", "patch", "delete"):
                continue
            op_where = f"{where}: paths.{route}.{method}"
            name = op.get("operationId")
            if not name:
                raise ToolSpecError(f"{op_where}.operationId: missing (each operation becomes a tool named by it)")
            properties, required, query, path_params, body = {}, [], [], [], []
            for k, p in enumerate(op.get("parameters", [])):
                p = _deref(doc, p, f"{op_where}.parameters[{k}]")
                if p.get("in") not in ("query", "path"):
                    continue
                schema = dict(_deref(doc, p.get("schema", {"type": "string"}), op_where))
                if p.get("description"):
                    schema.setdefault("description", p["description"])
                properties[p["name"]] = schema
                (path_params if p["in"] == "path" else query).append(p["name"])
                if p.get("required") or p["in"] == "path":
                    required.append(p["name"])
            content = ((op.get("requestBody") or {}).get("content") or {}).get("application/json")
            if content:
                schema = _deref(doc, content.get("schema", {}), f"{op_where}.requestBody")
                for prop, sub in (schema.get("properties") or {}).items():
                    properties[prop] = _deref(doc, sub, op_where)
                    body.append(prop)
                required += [r for r in schema.get("required", []) if r not in required]
            executor = Executor(
                kind="http", base_url=base.rstrip("/"), method=method.upper(), path=route,
                query_params=tuple(query), path_params=tuple(path_params), body_params=tuple(body),
                secret_env=secret_env, secret_header=secret_header,
            )
            specs.append(_make(
                f"{where}: operation {name!r}", name=name,
                description=op.get("description") or op.get("summary", ""),
                parameters={"type": "object", "properties": properties, "required": required},
                executor=executor, category=(op.get("tags") or ["general"])[0],
            ))
    return _unique(specs, where)


def _deref(doc: dict, node: Any, where: str) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ToolSpecError(f"{where}: $ref {ref!r}: only local references are supported")
        target: Any = doc
        for part in ref[2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise ToolSpecError(f"{where}: $ref {ref!r} does not resolve")
            target = target[part]
        node = target
    return node


# ---------------------------------------------------------------------------------------------
# (d) Python callables

PY_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def tool(name: str | None = None, category: str = "general", parent: str = "", parent_description: str = ""):
    """Mark a function as a tool; ``name`` may hold characters a Python name cannot (STE names)."""

    def mark(fn: Callable) -> Callable:
        fn.__ste_tool__ = {"name": name or fn.__name__, "category": category,
                           "parent": parent, "parent_description": parent_description}
        return fn

    return mark


def from_callable(fn: Callable[..., Any]) -> ToolSpec:
    """A spec from a function's signature, type hints and Google-style docstring (first paragraph
    = description; ``Args:`` lines = parameter descriptions)."""
    meta = getattr(fn, "__ste_tool__", {"name": fn.__name__, "category": "general", "parent": "", "parent_description": ""})
    where = f"function {fn.__module__}.{fn.__qualname__}"
    doc = inspect.getdoc(fn) or ""
    description, arg_docs = _parse_docstring(doc)
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required = []
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolSpecError(f"{where}: parameter {pname!r}: *args/**kwargs cannot be described to a model")
        if pname not in hints:
            raise ToolSpecError(f"{where}: parameter {pname!r}: needs a type hint")
        schema = _schema_of(hints[pname], f"{where}: parameter {pname!r}")
        if pname in arg_docs:
            schema["description"] = arg_docs[pname]
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        elif param.default is not None:
            schema["default"] = param.default
        properties[pname] = schema
    return _make(where, name=meta["name"], description=description,
                 parameters={"type": "object", "properties": properties, "required": required},
                 executor=Executor(kind="python", function=fn), category=meta["category"],
                 parent=meta["parent"], parent_description=meta["parent_description"])


def _schema_of(tp: Any, where: str) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _schema_of(args[0], where)
        return {"anyOf": [_schema_of(a, where) for a in args]}
    if origin is typing.Literal:
        values = list(typing.get_args(tp))
        return {"type": PY_TYPES[type(values[0])], "enum": values}
    if origin in (list, dict):
        schema: dict[str, Any] = {"type": PY_TYPES[origin]}
        if origin is list and typing.get_args(tp):
            schema["items"] = _schema_of(typing.get_args(tp)[0], where)
        return schema
    if tp in PY_TYPES:
        return {"type": PY_TYPES[tp]}
    raise ToolSpecError(f"{where}: type {tp!r} has no JSON-schema equivalent")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    parts = re.split(r"\n\s*(?:Args|Arguments|Parameters):\s*\n", doc, maxsplit=1)
    description = " ".join(parts[0].split())
    arg_docs: dict[str, str] = {}
    if len(parts) == 2:
        current = None
        for line in parts[1].splitlines():
            m = re.match(r"\s*(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line)
            if m and (not line.startswith(" " * 8)):
                current = m.group(1)
                arg_docs[current] = m.group(2).strip()
            elif current and line.strip():
                arg_docs[current] += " " + line.strip()
            elif not line.strip() and current:
                current = None
            if re.match(r"\s*(Returns|Raises|Yields):", line):
                break
    return description, arg_docs


# ---------------------------------------------------------------------------------------------
# (e) MCP servers


async def load_mcp(command: list[str] | None = None, url: str = "", category: str = "mcp") -> list[ToolSpec]:
    """List an MCP server's tools (``command``: a stdio server's command line; ``url``: a
    streamable-HTTP server). Calls go to the same server through the tool actors."""
    from mcp import Client, StdioServerParameters

    if bool(command) == bool(url):
        raise ToolSpecError("mcp: give exactly one of a stdio command or a URL")
    target = url or StdioServerParameters(command=command[0], args=list(command[1:]))
    where = f"mcp server {url or ' '.join(command)}"
    async with Client(target) as client:
        listed = await client.list_tools()
    specs = []
    for t in listed.tools:
        params = dict(t.input_schema or {"type": "object", "properties": {}})
        params.setdefault("type", "object")
        executor = Executor(kind="mcp", mcp_command=tuple(command or ()), mcp_url=url, mcp_tool=t.name)
        specs.append(_make(f"{where}: tool {t.name!r}", name=t.name, description=t.description or "",
                           parameters=params, executor=executor, category=category))
    return _unique(specs, where)


# ---------------------------------------------------------------------------------------------


def _make(where: str, **fields: Any) -> ToolSpec:
    try:
        return ToolSpec(**fields)
    except ToolSpecError as e:
        # Re-anchor the message on the file / object the spec came from.
        message = str(e).split(": ", 1)[1] if str(e).startswith("tool ") else str(e)
        raise ToolSpecError(f"{where}: {message}") from None


def _unique(specs: list[ToolSpec], where: str) -> list[ToolSpec]:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ToolSpecError(f"{where}: tool name {spec.name!r} appears twice")
        seen.add(spec.name)
    return specs


def _read_structured(path: str | Path | Location) -> Any:
    """A JSON or YAML file (by its suffix), local or at a filesystem URI."""
    location = Location.of(path)
    if not location.is_file():
        raise ToolSpecError(f"{path}: no such file")
    text = location.read_text()
    is_json = location.name.endswith(".json")
    try:
        return json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ToolSpecError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {e}") from None
