"""Tool sources: where the jobs' ``--tools`` find the tools to explore or evaluate.

    ste                 the STE benchmark APIs that have offline executors (the default)
    builtin             every built-in tool
    builtin:<category>  the built-ins of one category
    FILE.json|yaml      an OpenAI-tools file (with ``x-executor`` per tool)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ste_ray.tools.builtin import select_builtin, ste_offline_apis
from ste_ray.tools.loaders import load_openai_tools
from ste_ray.tools.spec import ToolSpec, ToolSpecError


def ste_api_descriptions_path() -> Path:
    """The STE descriptions of the APIs with offline executors, shipped with the package."""
    return Path(str(resources.files("ste_ray") / "data" / "ste_offline_apis.json"))


def select_tools(sources: list[str], names: list[str]) -> list[ToolSpec]:
    """The tools of ``sources`` (see the module docstring), keeping only ``names`` when given
    (an unknown name is an error)."""
    specs: dict[str, ToolSpec] = {}
    for source in sources:
        if source == "ste":
            found = ste_offline_apis(ste_api_descriptions_path())
        elif source == "builtin":
            found = select_builtin()
        elif source.startswith("builtin:"):
            found = select_builtin(categories=[source.split(":", 1)[1]])
        elif Path(source).is_file():
            found = load_openai_tools(source)
        else:
            raise ToolSpecError(f"tools: {source!r} is not 'ste', 'builtin', 'builtin:<category>' or a file")
        for spec in found:
            specs.setdefault(spec.name, spec)
    if names:
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise ToolSpecError(f"apis: {', '.join(map(repr, unknown))} not among the selected tools "
                                f"({', '.join(specs)})")
        return [specs[n] for n in names]
    return list(specs.values())
