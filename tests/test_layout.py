"""The package's import graph reads one way: tools → explore → exploit → train → serve → evaluate,
with the shared modules below every stage; no module imports a later stage, and no shared module
imports a stage."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ste_ray"
STAGES = ["tools", "explore", "exploit", "train", "serve", "evaluate", "pipeline"]


def stage_of(module: str) -> int | None:
    """The position of a module's stage in STAGES; None for a shared module."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ste_ray"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ste_ray"))
    return found


def modules() -> dict[str, Path]:
    result = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        result[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return result


def test_no_module_imports_a_later_stage():
    found = modules()
    assert {"ste_ray.react", "ste_ray.schema", "ste_ray.runs", "ste_ray.client", "ste_ray.config"} <= set(found)
    wrong = []
    for module, path in found.items():
        own = stage_of(module)
        for imported in imports_of(path):
            other = stage_of(imported)
            if other is not None and (own is None or other > own):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)



def test_a_later_stage_import_is_caught(tmp_path):
    """The check itself: a tools module that imported exploration would be reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ste_ray.explore.run import run_exploration\n")
    assert stage_of("ste_ray.tools.bad") < stage_of(next(iter(imports_of(bad))))
