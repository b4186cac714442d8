"""The cluster files, checked offline against the real schemas: the cluster launcher's YAML with Ray's
own schema and checks, the KubeRay manifests against KubeRay's CRD schemas (v1, shipped in
tests/data) made strict as KubeRay's own check is, the RayService's Serve config with Ray Serve LLM's
own model, and every job flag a manifest uses against that job's --help."""

from __future__ import annotations

import atexit
import copy
import functools
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))
SCHEMA_FILES = {"RayCluster": "rayclusters.v1.schema.json", "RayJob": "rayjobs.v1.schema.json",
                "RayService": "rayservices.v1.schema.json"}


@functools.lru_cache(maxsize=1)
def kuberay_schemas() -> Path:
    target = Path(tempfile.mkdtemp(prefix="kuberay-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    with tarfile.open(ROOT / "tests" / "data" / "kuberay.tar.xz") as archive:
        archive.extractall(target, filter="data")
    return target


def strict(schema: Any) -> Any:
    """Every object schema that lists its properties refuses others (KubeRay's kubeconform check)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def validator(kind: str) -> jsonschema.Draft7Validator:
    doc = json.loads((kuberay_schemas() / SCHEMA_FILES[kind]).read_text())
    return jsonschema.Draft7Validator(strict(doc["openAPIV3Schema"]))


def errors(manifest: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(manifest["kind"]).iter_errors(manifest)]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifests_validate_strictly(path):
    manifest = yaml.safe_load(path.read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] in SCHEMA_FILES
    assert errors(manifest) == []


def test_a_misspelt_field_is_caught():
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    bad = copy.deepcopy(manifest)
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = bad["spec"]["workerGroupSpecs"][0].pop("maxReplicas")
    assert any("maxReplica" in e for e in errors(bad))
    bad = copy.deepcopy(manifest)
    bad["spec"]["enableInTreeAutoscalling"] = True
    assert any("enableInTreeAutoscalling" in e for e in errors(bad))


def test_the_cluster_launcher_config_passes_rays_own_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["available_node_types"]["gpu"]["resources"]["GPU"] == 1
    del config["available_node_types"]["gpu"]["resources"]
    with pytest.raises(jsonschema.ValidationError, match="'resources' is a required property"):
        validate_config(prepare_config(config))


def test_the_rayservice_serve_config_is_a_valid_serve_llm_app():
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    service = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    for llm_config in app["args"]["llm_configs"]:
        LLMConfig.model_validate(llm_config)  # Ray Serve LLM's own model of the config
    ingress = app["args"]["ingress_cls_config"]["ingress_cls"]
    module, _, name = ingress.partition(":")
    assert Path(ROOT / (module.replace(".", "/") + ".py")).is_file() and f"class {name}(" in \
        (ROOT / (module.replace(".", "/") + ".py")).read_text()


def test_versions_and_job_flags_are_consistent():
    pyproject = (ROOT / "pyproject.toml").read_text()
    ray_pin = pyproject.split('"ray[default,train,serve,data]==', 1)[1].split('"', 1)[0]
    assert f"rayproject/ray:{ray_pin}-" in (ROOT / "cluster/Dockerfile").read_text()
    for path in MANIFESTS:
        manifest = yaml.safe_load(path.read_text())
        spec = manifest["spec"]
        cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
        assert cluster["rayVersion"] == ray_pin, path.name
        gpu = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
        assert gpu and cluster["enableInTreeAutoscaling"] and gpu[0]["maxReplicas"] > gpu[0]["minReplicas"] >= 0
        if "entrypoint" in spec:  # a RayJob runs a real job with flags that job accepts
            entry = spec["entrypoint"].split()
            assert entry[0] == "python" and (ROOT / entry[1]).is_file()
            help_text = subprocess.run([sys.executable, entry[1], "--help"], cwd=ROOT, capture_output=True, text=True,
                                       timeout=60).stdout
            for flag in (a for a in entry[2:] if a.startswith("--")):
                assert flag in help_text, f"{path.name}: {flag}"
