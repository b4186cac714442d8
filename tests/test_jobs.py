"""The jobs as users run them: subprocesses with flags, against the session's real engine."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_job(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.engine
def test_explore_job_joins_a_cluster_and_attaches_to_its_engine(ray_session, engine, engine_config, tmp_path):
    """The explore job joining a running cluster (the session's; --ray.address, as under `ray job
    submit`) and the engine running there: it explores, writes, refuses to overwrite, resumes, and
    leaves the cluster's Serve applications running."""
    import pyarrow.parquet as pq
    from ray import serve

    address = Path(ray_session, "ray_current_cluster").read_text().strip()
    args = ["jobs/explore.py", "--engine.mode", "attach", "--engine.port", str(engine_config.port),
            "--apis", "add_date", "--output", str(tmp_path), "--explore.num_episodes", "1",
            "--explore.num_stm_slots", "1", "--explore.max_turn", "1", "--explore.num_actors", "1",
            "--explore.turn_max_tokens", "64", "--ray.address", address]
    joined = {"RAY_AUTH_MODE": "disabled"}  # as the session's cluster was started
    result = run_job(*args, env=joined)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"exploring 1 APIs × 1 episodes with {engine.model} at {engine.base_url}" in result.stdout
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("add_date "))
    assert row[1:3] == ["1", "1"]  # episodes, trials
    assert f"wrote {tmp_path}/trials/" in result.stdout
    assert len(pq.read_table(tmp_path / "trials")) == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["apis"] == ["add_date"] and manifest["packages"]["ray"]
    # A quiet console: the job's own lines on stdout, the progress bar on stderr, Ray's logs in the file.
    log_path = Path(result.stdout.splitlines()[0].removeprefix("logs: "))
    assert log_path.parent == tmp_path / "logs" and log_path.is_file()
    assert len(result.stdout.strip().splitlines()) < 15
    assert not [line for line in result.stderr.splitlines() if "episodes" not in line and line.strip()], result.stderr

    again = run_job(*args, env=joined)  # the same output without --resume: refused before any work
    assert again.returncode != 0 and "pass --resume" in again.stderr
    resumed = run_job(*args, "--resume", env=joined)
    assert resumed.returncode == 0 and "0 episodes in" in resumed.stdout and "1 from an earlier run" in resumed.stdout
    assert str(serve.status().applications[engine_config.app_name].status).endswith("RUNNING")


def test_bad_input_fails_before_any_work():
    result = run_job("jobs/explore.py", "--engine.mode", "remote", timeout=60)
    assert result.returncode != 0
    assert "engine.mode: must be one of start, attach, external" in result.stderr
    assert "ray" not in result.stdout.lower()  # nothing was started
    unknown = run_job("jobs/explore.py", "--apis", "no_such_api", timeout=60)
    assert unknown.returncode != 0 and "apis: 'no_such_api' not among the selected tools" in unknown.stderr


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def test_unreachable_endpoint_is_a_one_line_error(tmp_path):
    result = run_job("jobs/explore.py", "--engine.mode", "attach", "--engine.port", "9", "--output", str(tmp_path),
                     timeout=120)
    assert "failed after 3 attempts" in one_line_error(result)


def test_unwritable_output_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_job("jobs/explore.py", "--output", str(tmp_path / "file" / "out"), timeout=60)
    assert f"output: cannot write to {tmp_path}/file/out" in one_line_error(result)


def test_help_lists_every_flag():
    result = run_job("jobs/explore.py", "--help", timeout=60)
    assert result.returncode == 0
    for flag in ("--engine.mode", "--engine.max_replicas", "--ray.address", "--explore.num_episodes",
                 "--no-exec", "--no-stm", "--no-ltm", "--no-reflection", "--tools", "--apis", "--explorer-url",
                 "--model", "--output", "--resume", "--visualize"):
        assert flag in result.stdout


@pytest.mark.parametrize("job, config", [("explore", "ExploreConfig"), ("exploit", "ExploitConfig"),
                                         ("train", "TrainConfig"), ("serve", "ServeConfig"),
                                         ("evaluate", "EvaluateConfig")])
def test_readme_documents_every_flag(job, config):
    from ste_ray.config import flags_markdown

    spec = importlib.util.spec_from_file_location(f"{job}_job", ROOT / f"jobs/{job}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    for row in flags_markdown(getattr(module, config)).splitlines()[2:]:
        flag = row.split("`")[1]
        assert f"`{flag}`" in readme, f"{flag} is not documented in the README"


def readme_block(marker: str) -> str:
    """The shell block that follows ``<!-- marker -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def readme_cluster():
    """The README's local cluster, started by the README's own commands up to its `ray submit`, with
    RAY_TMPDIR set so that its processes can be told apart: the teardown kills them (the README's
    `ray stop` would stop every Ray cluster on the host, the test session's too). One cluster for the
    module's tests, as one user submits several jobs to one."""
    import psutil

    lines = [ln for ln in readme_block("cluster-commands").splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("ray start"))
    shell_setup = lines[:start]  # the venv and the token, which every later command needs too
    submit = next(ln for ln in lines if ln.startswith("ray job submit"))
    assert lines[-1].startswith("ray stop")
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIRTUAL_ENV")} | {"RAY_TMPDIR": str(temp)}

    def shell(*commands: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", "set -e\n" + "\n".join(commands)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)

    started = shell(*shell_setup, lines[start], timeout=180)
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield shell, shell_setup, submit
    finally:
        doomed = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
        doomed += [c for p in doomed for c in p.children(recursive=True)]
        for p in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(doomed, timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.engine
def test_readme_cluster_commands_run_the_job(readme_cluster):
    """`ray start` / `ray job submit` exactly as the README writes them: the venv's `python` on a
    cluster with enough CPU slots; the exploration finishes and its output is where the README says."""
    shell, setup, submit = readme_cluster
    output = ROOT / "outputs" / "explore-cluster"  # the README's --output
    assert str(output.relative_to(ROOT)) in submit
    shutil.rmtree(output, ignore_errors=True)
    result = shell(*setup, submit, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "failed for good: 0" in result.stdout and f"wrote {output}/trials/" in result.stdout, result.stdout[-3000:]
    assert json.loads((output / "manifest.json").read_text())["status"] == "finished"
    shutil.rmtree(output, ignore_errors=True)


@pytest.mark.engine
def test_an_engine_the_cluster_cannot_hold_fails_within_a_minute(readme_cluster):
    shell, setup, submit = readme_cluster
    command = "ray job submit --working-dir . -- python jobs/explore.py --engine.cpus_per_replica 64"
    started = time.monotonic()
    result = shell(*setup, command, timeout=300)
    assert result.returncode != 0
    job_log = result.stdout.split("Status message:")[0]  # on failure the CLI prints the job's log again after it
    errors = [ln for ln in job_log.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "the engine can never be placed on this Ray cluster" in errors[0], result.stdout[-3000:]
    assert "ray start --head --num-cpus" in errors[0]
    assert time.monotonic() - started < 60


def test_readme_documents_the_pipeline_and_its_sections():
    from ste_ray.config import flags_markdown

    spec = importlib.util.spec_from_file_location("pipeline_job", ROOT / "jobs/pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    for row in flags_markdown(module.PipelineConfig).splitlines()[2:]:
        flag = row.split("`")[1]
        section = flag[2:].split(".")[0]
        assert f"`{flag}`" in readme or f"`--{section}.*`" in readme, f"{flag} is not documented in the README"
