"""The jobs as users run them: subprocesses with flags, against the session's real engine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_job(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.engine
def test_explore_job_attached_to_the_engine(engine, engine_config, tmp_path):
    import pyarrow.parquet as pq

    args = ["jobs/explore.py", "--engine.mode", "attach", "--engine.port", str(engine_config.port),
            "--apis", "add_date", "--output", str(tmp_path), "--explore.num_episodes", "1",
            "--explore.num_stm_slots", "1", "--explore.max_turn", "1", "--explore.num_actors", "1",
            "--explore.turn_max_tokens", "64", "--ray.include_dashboard", "false"]
    result = run_job(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"exploring 1 APIs × 1 episodes with {engine.model} at {engine.base_url}" in result.stdout
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("add_date "))
    assert row[1:3] == ["1", "1"]  # episodes, trials
    assert f"wrote {tmp_path}/trials/" in result.stdout
    assert len(pq.read_table(tmp_path / "trials")) == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["apis"] == ["add_date"] and manifest["packages"]["ray"]

    again = run_job(*args)  # the same output without --resume: refused before any work
    assert again.returncode != 0 and "pass --resume" in again.stderr
    resumed = run_job(*args, "--resume")
    assert resumed.returncode == 0 and "0 episodes in" in resumed.stdout and "1 from an earlier run" in resumed.stdout


def test_bad_input_fails_before_any_work():
    result = run_job("jobs/explore.py", "--engine.mode", "remote", timeout=60)
    assert result.returncode != 0
    assert "engine.mode: must be one of start, attach, external" in result.stderr
    assert "ray" not in result.stdout.lower()  # nothing was started
    unknown = run_job("jobs/explore.py", "--apis", "no_such_api", timeout=60)
    assert unknown.returncode != 0 and "apis: 'no_such_api' not among the selected tools" in unknown.stderr


def test_unreachable_endpoint_is_a_clear_error(tmp_path):
    result = run_job("jobs/explore.py", "--engine.mode", "attach", "--engine.port", "9", "--output", str(tmp_path),
                     timeout=120)
    assert result.returncode != 0
    assert "failed after 3 attempts" in result.stderr


def test_help_lists_every_flag():
    result = run_job("jobs/explore.py", "--help", timeout=60)
    assert result.returncode == 0
    for flag in ("--engine.mode", "--engine.max_replicas", "--ray.address", "--explore.num_episodes",
                 "--no-exec", "--no-stm", "--no-ltm", "--no-reflection", "--tools", "--apis", "--explorer-url",
                 "--model", "--output", "--resume", "--visualize"):
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


@pytest.mark.parametrize("job, config", [("explore", "ExploreConfig"), ("evaluate", "EvaluateConfig")])
def test_readme_documents_every_flag(job, config):
    from ste_ray.config import flags_markdown

    spec = importlib.util.spec_from_file_location(f"{job}_job", ROOT / f"jobs/{job}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    for row in flags_markdown(getattr(module, config)).splitlines()[2:]:
        flag = row.split("`")[1]
        assert f"`{flag}`" in readme, f"{flag} is not documented in the README"


@pytest.fixture
def head_node(tmp_path):
    """A second Ray cluster on this host started the way the README starts one, `ray start --head`,
    with its own temp dir and ports (the test session's Ray instance holds the defaults). Yields its
    dashboard URL; afterwards every process it started is killed (not `ray stop`, which would stop
    the session's cluster too)."""
    import signal
    import tempfile
    import time

    from tests.conftest import free_port

    temp_dir = tempfile.mkdtemp(prefix="ray-j", dir="/tmp")  # short: Unix socket paths under it
    dashboard_port = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard_port, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--metrics-export-port": free_port()}
    with (tmp_path / "ray-start.log").open("w") as log:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 "--num-cpus", "4", "--temp-dir", temp_dir, "--disable-usage-stats",
                                 *(str(a) for kv in ports.items() for a in kv)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not Path(temp_dir, "ray_current_cluster").exists():
            assert head.poll() is None, (tmp_path / "ray-start.log").read_text()
            assert time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        # The cluster's processes share the `ray start` process group.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.mark.engine
def test_explore_under_ray_job_submit(engine, engine_config, head_node, tmp_path):
    """The README's cluster path: the job submitted through Ray's Jobs API to a `ray start --head`
    cluster, the repository as working dir, joining with --ray.address auto. The job supervisor finds
    its cluster through the `ray_current_cluster` file that `ray start` writes into its temp dir."""
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    token = Path.home() / ".ray" / "auth_token"
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else None
    output = tmp_path / "out"
    submit = lambda client: client.submit_job(
        entrypoint=f"{sys.executable} jobs/explore.py --ray.address auto --engine.mode attach "
                   f"--engine.port {engine_config.port} --apis add_date --output {output} "
                   "--explore.num_episodes 1 --explore.num_stm_slots 1 --explore.max_turn 1 "
                   "--explore.num_actors 1 --explore.turn_max_tokens 160",
        runtime_env={"working_dir": str(ROOT),
                     "excludes": [".venv", ".git", "outputs", "results", "*.egg-info", "__pycache__"]},
    )
    deadline = time.monotonic() + 60
    while True:  # the head's dashboard and job agent come up some seconds after the cluster
        try:
            client = JobSubmissionClient(head_node, headers=headers)
            job = submit(client)
            break
        except (RuntimeError, ConnectionError) as e:
            assert time.monotonic() < deadline, e
            time.sleep(2)
    deadline = time.monotonic() + 600
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert f"wrote {output}/trials/" in logs
    assert "1 episodes in" in logs and "failed for good: 0" in logs, logs[-3000:]
    import pyarrow.parquet as pq

    assert len(pq.read_table(output / "episodes")) == 1
