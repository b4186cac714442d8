"""The pipeline job end to end on the real engine, tiny settings (the embedded model stands in for the
teacher), with its output on object storage (moto's S3 server, see conftest.py): a finished stage is
skipped, a pipeline killed during training continues from the training checkpoint on S3 when run
again, the fine-tuned model is served from S3 (each replica downloads it) and measured beside its base
model, and a third run that adds a second round explores with the fine-tuned student without
running round 1 again. The stages on a local directory: their own tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import shutil
from pathlib import Path

import psutil
import pytest

from ste_ray.engine import EngineConfig
from ste_ray.evaluate import EvalSettings
from ste_ray.exploit import ExploitSettings
from ste_ray.explore import ExploreSettings
from ste_ray.pipeline import Pipeline, PipelineSettings
from ste_ray.runs import read_manifest, update_manifest
from ste_ray.schema import Episode, Trial, read_records
from ste_ray.storage import Location
from ste_ray.tools.calls import ToolCallConfig
from ste_ray.train import TrainSettings
from tests.conftest import free_port
from tests.exploration_data import CALLS, faithful_trials, write_exploration

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.engine


def command(output: Location) -> list[str]:
    apis = sorted({api for api, *_ in CALLS})
    return [sys.executable, str(ROOT / "jobs" / "pipeline.py"), "--output", output.uri(), "--ray.include_dashboard", "false",
            "--pipeline.apis", json.dumps(apis), "--pipeline.teacher_eval_limit", "1",
            "--teacher.model", "embedded", "--teacher.port", str(free_port()), "--teacher.max_model_len", "2048",
            "--teacher.cpu_kv_cache_gib", "1", "--student.port", str(free_port()), "--student.max_model_len", "2048",
            "--student.cpu_kv_cache_gib", "1", "--exploit.target_per_api", "4", "--exploit.max_paraphrases", "1",
            # 2 examples a step: the 6 trials alone (whatever paraphrases the tiny model keeps) make 3
            # steps, so the kill below lands before the last checkpoint.
            "--exploit.validation_share", "0", "--train.batch_size", "1", "--train.effective_batch_size", "2",
            "--train.epochs", "1", "--train.checkpoint_every", "1", "--eval.limit", "1",
            # LoRA, not the pipeline's default full fine-tuning: a checkpoint a step of 60 MB instead of
            # 1.6 GB (weights and optimizer state) on the S3 server. test_train trains and loads a full model.
            "--train.method", "lora"]


def test_pipeline_skips_finished_stages_and_resumes_training_after_a_kill(tmp_path, s3_uri):
    output = Location.of(s3_uri("pipeline"))
    trials, specs = faithful_trials()
    write_exploration(output / "explore", trials, specs)
    update_manifest(output / "explore", {"status": "finished"})  # an exploration that already ran

    snapshot = output / "train" / "ray_train" / "train" / "checkpoint_manager_snapshot.json"
    log = (tmp_path / "first.log").open("w")
    # Run from tmp_path: with a URI output the job's log goes to ./logs/.
    first = subprocess.Popen(command(output), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    while not (snapshot.is_file() and json.loads(snapshot.read_text())["checkpoint_results"]):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no training checkpoint"
        time.sleep(0.5)
    group = [p for p in psutil.process_iter() if _group(p) == first.pid]
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its local Ray instance die during training
    psutil.wait_procs(group, timeout=30)
    log.close()
    text = (tmp_path / "first.log").read_text()
    assert "explore: complete, skipped" in text and "exploit: running" in text and "train: running" in text

    again = subprocess.run(command(output), cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in ("explore", "exploit"):
        assert f"{stage}: complete, skipped" in again.stdout
    assert "train: running" in again.stdout and "evaluate: running" in again.stdout
    train = json.loads((output / "train" / "metrics.json").read_text())
    assert train["resumed_at"] and train["resumed_at"][0] >= 1  # continued from the checkpoint of the killed run
    assert [h["step"] for h in train["history"]] == list(range(1, len(train["history"]) + 1))
    metrics = json.loads((output / "evaluate" / "metrics.json").read_text())
    assert set(metrics) == {"base top5", "base top5+demos4", "tuned top5", "tuned top5+constrained"}
    assert all(m["n"] == 3 for m in metrics.values())
    teacher = json.loads((output / "evaluate" / "teacher.json").read_text())
    assert teacher["n"] == 3 and teacher["setting"] == "top5"
    predictions = {name: json.loads((output / "evaluate" / "predictions" / f"{name}.json").read_text())
                   for name in ("base-top5", "tuned-top5")}
    outputs = {name: [i["model_output"] for items in p.values() for i in items] for name, p in predictions.items()}
    assert outputs["tuned-top5"] != outputs["base-top5"]  # the fine-tuned model answers differently
    report = (output / "report.md").read_text()
    assert "tuned top5" in report and "## Data funnel" in report and (output / "outcome.png").is_file()
    outcome = json.loads((output / "outcome.json").read_text())
    assert outcome["metrics"]["tuned top5"] == metrics["tuned top5"]

    # Iterated STE: a third run adds a second round, which explores with round 1's fine-tuned student
    # making the calls; round 1's stages are not run again (exploitation and training of a round are
    # round 1's code; the whole second round is measured in results/pipeline_outcome_rounds2.json).
    third = subprocess.run(command(output) + ["--pipeline.rounds", "2", "--until", "explore_2",
                                              "--explore.num_episodes", "1", "--explore.num_stm_slots", "1"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    for stage in ("explore", "exploit", "train"):
        assert f"{stage}: complete, skipped" in third.stdout
    assert "explore_2: serving tuned as the explorer" in third.stdout and "evaluate: not asked for" in third.stdout
    assert list((tmp_path / "logs").glob("pipeline-*.log"))
    explored = read_manifest(output / "explore_2")
    assert explored["status"] == "finished" and (explored["model"], explored["imaginer"]) == ("tuned", "teacher")
    episodes = read_records(output / "explore_2" / "episodes", Episode)
    round_1 = [t.api for t in read_records(output / "explore" / "trials", Trial)]
    assert sorted(e.api for e in episodes) == sorted(set(round_1))  # one episode per API
    assert all(e.memory_size == round_1.count(e.api) for e in episodes)  # it remembers round 1's requests
    trials = read_records(output / "explore_2" / "trials", Trial)
    assert len(trials) == len(episodes) and sum(t.num_calls for t in trials) >= 1  # the student's calls really ran
    for stage in ("exploit", "train"):  # the local working copies of an output on object storage
        shutil.rmtree(output.staging_dir(stage), ignore_errors=True)


def test_evaluation_is_complete_only_with_a_row_for_every_student(tmp_path):
    """A finished evaluation is skipped, unless a round was added whose student has no row yet."""
    def pipeline(rounds: int) -> Pipeline:
        return Pipeline(Location.of(tmp_path), PipelineSettings(rounds=rounds, apis=["add_date"]), EngineConfig(),
                        EngineConfig(), ExploreSettings(), ToolCallConfig(), ExploitSettings(), TrainSettings(),
                        EvalSettings(), say=print)

    update_manifest(tmp_path / "evaluate", {"status": "finished"})
    rows = ["base top5", "base top5+demos4", "tuned top5", "tuned top5+constrained"]
    (tmp_path / "evaluate" / "metrics.json").write_text(json.dumps({row: {} for row in rows}))
    assert pipeline(1).complete("evaluate") and not pipeline(1).unmeasured()
    later = pipeline(2)
    assert not later.complete("evaluate") and list(later.unmeasured()) == ["tuned_2"]


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return None
