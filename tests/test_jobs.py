"""The jobs as users run them: subprocesses with flags, against the session's real engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_job(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.engine
def test_explore_job_attached_to_the_engine(engine, engine_config):
    result = run_job(
        "jobs/explore.py", "--engine.mode", "attach", "--engine.port", str(engine_config.port),
        "--prompt", "Name one planet.", "--max_tokens", "12",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"explorer {engine.model} at {engine.base_url}" in out
    answer = out.split("A: ", 1)[1].split("\n", 1)[0]
    assert answer.strip()
    table = out.strip().splitlines()[-1].split()
    prompt_tokens, output_tokens = int(table[2]), int(table[3])
    assert prompt_tokens > 5 and 0 < output_tokens <= 12


def test_bad_flag_fails_before_any_work():
    result = run_job("jobs/explore.py", "--engine.mode", "remote", timeout=60)
    assert result.returncode != 0
    assert "engine.mode: must be one of start, attach, external" in result.stderr
    assert "ray" not in result.stdout.lower()  # nothing was started


def test_unreachable_endpoint_is_a_clear_error():
    result = run_job("jobs/explore.py", "--engine.mode", "attach", "--engine.port", "9", timeout=120)
    assert result.returncode != 0
    assert "failed after 3 attempts" in result.stderr


def test_help_lists_every_flag():
    result = run_job("jobs/explore.py", "--help", timeout=60)
    assert result.returncode == 0
    for flag in ("--engine.mode", "--engine.max_replicas", "--ray.address", "--prompt"):
        assert flag in result.stdout


def test_cluster_files_are_consistent():
    pyproject = (ROOT / "pyproject.toml").read_text()
    ray_pin = pyproject.split('"ray[default,train,serve,data]==', 1)[1].split('"', 1)[0]
    cluster = yaml.safe_load((ROOT / "cluster/kuberay/raycluster.yaml").read_text())
    job = yaml.safe_load((ROOT / "cluster/kuberay/rayjob-explore.yaml").read_text())
    launcher = yaml.safe_load((ROOT / "cluster/aws-gpu.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    assert cluster["spec"]["rayVersion"] == job["spec"]["rayClusterSpec"]["rayVersion"] == ray_pin
    assert f"rayproject/ray:{ray_pin}-" in (ROOT / "cluster/Dockerfile").read_text()
    # The RayJob runs a real job with flags that job accepts.
    entry = job["spec"]["entrypoint"].split()
    assert entry[0] == "python" and (ROOT / entry[1]).is_file()
    help_text = run_job(entry[1], "--help", timeout=60).stdout
    for flag in (a for a in entry[2:] if a.startswith("--")):
        assert flag in help_text, flag
    gpu_groups = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu_groups and gpu_groups[0]["minReplicas"] == 0 and cluster["spec"]["enableInTreeAutoscaling"]
    assert launcher["available_node_types"]["gpu"]["min_workers"] == 0
