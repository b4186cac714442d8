"""What a tool is: a name, a description, a JSON-schema for its arguments, and an executor.

A spec renders to the text the explorer sees (the STE ``API_name: ... / Description: ...`` block)
and to OpenAI ``tools`` JSON, and validates arguments (jsonschema) before anything is executed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jsonschema

from ste_ray.react import ste_block

EXECUTOR_KINDS = ("python", "http", "mcp")


class ToolSpecError(ValueError):
    """A tool definition is invalid. The message names the file (or object) and the field."""


class ToolInputError(ValueError):
    """A Python tool's arguments are well-formed but cannot be served (unknown place, bad date, ...):
    its message goes back to the model as the observation."""


@dataclasses.dataclass
class Executor:
    """How a tool is run. Exactly the fields of its kind are used."""

    kind: str
    function: Callable[..., Any] | None = None  # python: called with the arguments as keywords
    base_url: str = ""  # http: scheme://host[:port][/prefix]
    method: str = "POST"  # http
    path: str = ""  # http: may hold {path_params}
    query_params: tuple[str, ...] = ()  # http: arguments sent in the query string
    path_params: tuple[str, ...] = ()  # http: arguments substituted into the path
    body_params: tuple[str, ...] = ()  # http: arguments sent as the JSON body (POST/PUT/PATCH)
    secret_env: str = ""  # http: environment variable holding the API key, sent only to base_url's host
    secret_header: str = "Authorization"  # http: header carrying it ("Authorization" gets "Bearer ")
    mcp_command: tuple[str, ...] = ()  # mcp over stdio: the server's command line
    mcp_url: str = ""  # mcp over streamable HTTP
    mcp_tool: str = ""  # the tool's name on the MCP server

    def __post_init__(self) -> None:
        if self.kind not in EXECUTOR_KINDS:
            raise ToolSpecError(f"executor.kind: must be one of {', '.join(EXECUTOR_KINDS)}, got {self.kind!r}")

    @property
    def group(self) -> str:
        """Tools of one group share an actor: one per HTTP host, one per MCP server, one for
        in-process Python tools. Limits stay per tool inside the actor."""
        if self.kind == "http":
            return "http:" + self.base_url.split("://", 1)[-1].split("/", 1)[0]
        if self.kind == "mcp":
            return "mcp:" + (self.mcp_url or " ".join(self.mcp_command))
        return "python"


@dataclasses.dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of type object
    executor: Executor | None = None
    category: str = "general"
    parent: str = ""  # the parent tool (STE/ToolBench APIs belong to a tool)
    parent_description: str = ""
    source_text: str = ""  # the description exactly as the STE data shows it, if loaded from there

    def __post_init__(self) -> None:
        check_spec(self, where=f"tool {self.name!r}")

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))

    def ste_description(self) -> str:
        """The description part of the STE block: the STE data's own text when there is one,
        otherwise the ToolBench JSON layout the benchmark uses for RapidAPI tools."""
        if self.source_text:
            return self.source_text
        props = self.parameters.get("properties", {})

        def param(name: str) -> dict[str, Any]:
            schema = props.get(name, {})
            entry = {
                "name": name,
                "type": str(schema.get("type", "string")).upper(),
                "description": schema.get("description", ""),
            }
            if "enum" in schema:
                entry["enum"] = schema["enum"]
            if "default" in schema:
                entry["default"] = schema["default"]
            return entry

        required = self.required
        body: dict[str, Any] = {
            "description": self.description,
            "required_parameters": [param(n) for n in required],
            "optional_parameters": [param(n) for n in props if n not in required],
        }
        if self.parent:
            body["parent_tool_name"] = self.parent
            body["parent_tool_description"] = self.parent_description
        return json.dumps(body, ensure_ascii=False)

    def ste_block(self) -> str:
        return ste_block(self.name, self.ste_description())

    def openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def record(self) -> dict[str, Any]:
        """The spec as a run records it (``tools.json``; ``load_openai_tools`` reads it back): OpenAI
        tools JSON plus the category and the exact text the STE prompts showed."""
        return self.openai() | {"x-category": self.category, "x-ste-description": self.ste_description()}

    def argument_error(self, arguments: Any) -> str | None:
        """Why these arguments do not fit the schema (for the explorer to read), or None."""
        if not isinstance(arguments, dict):
            return f"the Action Input must be a JSON object, got {type(arguments).__name__}"
        validator = jsonschema.Draft202012Validator(self.parameters)
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
        if not errors:
            return None
        messages = []
        for error in errors[:3]:
            where = ".".join(str(p) for p in error.path)
            messages.append(f"{where}: {error.message}" if where else error.message)
        allowed = ", ".join(self.parameters.get("properties", {})) or "none"
        return f"invalid arguments for {self.name}: {'; '.join(messages)} (parameters: {allowed})"


def check_spec(spec: ToolSpec, where: str) -> None:
    if not spec.name or not isinstance(spec.name, str):
        raise ToolSpecError(f"{where}: name: must be a non-empty string")
    if not isinstance(spec.description, str):
        raise ToolSpecError(f"{where}: description: must be a string")
    params = spec.parameters
    if not isinstance(params, dict) or params.get("type") != "object":
        raise ToolSpecError(f"{where}: parameters: must be a JSON schema with type 'object'")
    try:
        jsonschema.Draft202012Validator.check_schema(params)
    except jsonschema.SchemaError as e:
        path = ".".join(str(p) for p in e.path)
        raise ToolSpecError(f"{where}: parameters{'.' + path if path else ''}: {e.message}") from None
    props = params.get("properties", {})
    for name in params.get("required", []):
        if name not in props:
            raise ToolSpecError(f"{where}: parameters.required: {name!r} is not among the properties")


def normalized_arguments(arguments: dict[str, Any]) -> str:
    """A canonical text of the arguments: the key of the record/replay cache."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
