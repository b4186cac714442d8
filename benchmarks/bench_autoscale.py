"""Autoscaling on one host, with Ray's fake multi-node provider: the real autoscaler (v1) launches
worker "nodes" that are raylets on this machine. Three scenes, each checked (the script exits 1 if
a check fails) and timed from a timeline sampled every second:

1. engine: the explorer's replicas need ``fake_gpu``, which only ``gpu`` workers offer. The autoscaler
   adds a worker for the first replica; exploration's load makes Serve add a second replica (a second
   worker) and, once the run is over, remove it (and the autoscaler the idle worker). The run
   finishes every episode, none twice.
2. node loss: exploration actors need ``explorer_node``, which only ``cpu`` workers offer; that worker
   is killed mid-run (all its processes, as a preempted VM). Its episodes are rerun: none lost.
3. train: training workers need ``fake_gpu``: they wait for the autoscaler's worker and run on it.

    python benchmarks/bench_autoscale.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import ray
import yaml

from ste_ray.config import job_config, option, to_dict
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.explore import ExploreSettings, run_exploration
from ste_ray.explore.episode import episode_id
from ste_ray.report import format_table
from ste_ray.schema import Episode, read_dir
from ste_ray.tools.builtin import ste_offline_apis
from ste_ray.tools.calls import ToolCallConfig
from ste_ray.tools.sources import ste_api_descriptions_path
from ste_ray.train import TrainSettings, run_training

from bench_train import sft_data  # the same directory: the training benchmark's examples

APIS = ["add_date", "get_today_date"]
HEAD_CPUS = 4  # the driver's Serve controller, the engine's ingress, the scene 2 engine replica


@dataclasses.dataclass
class BenchAutoscaleConfig:
    """The autoscaler adding and removing nodes under ste-ray's engine, exploration and training."""

    episodes: int = option(12, help="Episodes per API in scene 1 (the load that makes Serve add a replica)", ge=2)
    loss_episodes: int = option(6, help="Episodes per API in scene 2 (a worker killed mid-run)", ge=2)
    output: str = option("results/bench_autoscale.json", help="Where the JSON results go")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def autoscaling_config(gcs_address: str) -> dict:
    """The fake provider's cluster config. The v1 autoscaler fills no defaults: every key is given."""
    return {
        "cluster_name": "ste-fake", "max_workers": 4, "idle_timeout_minutes": 0.25, "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "auth": {"ssh_user": "ray"}, "docker": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": HEAD_CPUS}, "node_config": {}, "max_workers": 0},
            # An engine replica needs 1 CPU for vLLM and 1 for its Serve actor.
            "gpu": {"resources": {"CPU": 2, "fake_gpu": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
            "cpu": {"resources": {"CPU": 1, "explorer_node": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def start_cluster(temp_dir: Path) -> tuple[subprocess.Popen, str]:
    """``ray start --head`` with the fake provider, in its own process group; returns the head and
    its GCS address once the cluster is up."""
    port = free_port()
    gcs = f"{ray._private.services.get_node_ip_address()}:{port}"
    config = temp_dir / "fake.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(gcs)))
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10", "RAY_AUTH_MODE": "disabled"}
    log = (temp_dir / "ray-start.log").open("w")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--port", str(port), "--num-cpus", str(HEAD_CPUS),
         "--temp-dir", str(temp_dir / "ray"), "--disable-usage-stats", "--include-dashboard", "false",
         "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
         "--autoscaling-config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 90
    while not (temp_dir / "ray" / "ray_current_cluster").exists():
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed: {(temp_dir / 'ray-start.log').read_text()[-2000:]}")
        time.sleep(0.5)
    return head, gcs


def stop_cluster(head: subprocess.Popen) -> None:
    """The head's process group, and the fake workers (started by the autoscaler, outside it)."""
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    for process in psutil.process_iter():
        try:
            if process.environ().get("RAY_CLOUD_INSTANCE_ID", "").startswith("ffffffff"):
                process.kill()
        except (psutil.Error, OSError):
            pass


def kill_node(node_id: str) -> int:
    """Kill every process of a fake worker node (its raylet, agents and workers), as a VM that
    vanishes: the fake provider tags them with the node's id."""
    killed = 0
    for process in psutil.process_iter():
        try:
            if process.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id:
                process.kill()
                killed += 1
        except (psutil.Error, OSError):
            pass
    return killed


class Timeline:
    """Every second: live worker nodes by type, running engine replicas, and where the exploration
    actors and training workers are. (A poll: the cluster state has no event to await.)"""

    def __init__(self, head_node_id: str):
        self.head = head_node_id
        self.started = time.monotonic()
        self.samples: list[dict] = []
        self.events: list[tuple[float, str]] = []
        self.failure = ""

    def event(self, text: str) -> None:
        self.events.append((round(time.monotonic() - self.started, 1), text))
        print(f"[{self.events[-1][0]:7.1f}s] {text}", flush=True)

    def sample(self) -> dict:
        from ray import serve

        nodes = [n for n in ray.nodes() if n["Alive"]]
        kinds = {"gpu": 0, "cpu": 0}
        for n in nodes:
            kinds["gpu"] += int("fake_gpu" in n["Resources"])
            kinds["cpu"] += int("explorer_node" in n["Resources"])
        replicas = 0
        for app in serve.status().applications.values():
            for name, deployment in app.deployments.items():
                if name.startswith("LLMServer"):
                    replicas += deployment.replica_states.get("RUNNING", 0)
        placed = {}
        # The GCS's actor table: the state API (ray.util.state) needs the dashboard, which this cluster runs without.
        for actor in ray._private.state.actors(actor_state_name="ALIVE").values():
            node_id = actor["Address"]["NodeID"]
            for cls in ("ExplorerActor", "RayTrainWorker"):
                if cls in actor["ActorClassName"]:
                    placed.setdefault(cls, []).append("head" if node_id == self.head else node_id[-5:])
        sample = {"t": round(time.monotonic() - self.started, 1), "gpu_nodes": kinds["gpu"], "cpu_nodes": kinds["cpu"],
                  "replicas": replicas, **placed}
        if not self.samples or {k: v for k, v in sample.items() if k != "t"} != \
                {k: v for k, v in self.samples[-1].items() if k != "t"}:
            print(f"[{sample['t']:7.1f}s] {json.dumps({k: v for k, v in sample.items() if k != 't'})}", flush=True)
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sample)
            except Exception as e:  # without samples every wait below would time out: say why instead
                self.failure = f"timeline sampling failed: {type(e).__name__}: {e}"
                self.event(self.failure)
                raise
            await asyncio.sleep(1.0)

    async def until(self, predicate, timeout_s: float, what: str) -> float:
        """Wait for a sample that satisfies ``predicate``; the seconds it took."""
        started = time.monotonic()
        while not self.samples or not predicate(self.samples[-1]):
            if self.failure:
                raise RuntimeError(self.failure)
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"not within {timeout_s:.0f}s: {what}")
            await asyncio.sleep(0.5)
        return round(time.monotonic() - started, 1)


def first_time(samples: list[dict], predicate) -> float | None:
    return next((s["t"] for s in samples if predicate(s)), None)


def all_episodes(directory: Path, per_api: int) -> tuple[bool, int]:
    ids = [e["episode_id"] for e in read_dir(directory / "episodes", Episode).to_pylist()]
    expected = sorted(episode_id(api, i) for api in APIS for i in range(per_api))
    return sorted(ids) == expected, len(ids)


async def scenes(cfg: BenchAutoscaleConfig, work: Path, timeline: Timeline) -> dict:
    specs = ste_offline_apis(ste_api_descriptions_path(), APIS)
    results: dict = {}
    sampler = asyncio.ensure_future(timeline.run())
    tiny = dict(num_stm_slots=2, max_turn=2, query_max_tokens=32, turn_max_tokens=128, shard_episodes=1)
    try:
        # -- 1. engine replicas on added nodes, Serve autoscaling under exploration's load --------
        engine_cfg = EngineConfig(port=free_port(), max_model_len=2048, cpu_kv_cache_gib=1.0,
                                  resources_per_replica={"fake_gpu": 1}, num_replicas=1, max_replicas=2,
                                  target_ongoing_requests=2, upscale_delay_s=2, downscale_delay_s=10)
        timeline.event("scene 1: deploying the engine (its replicas need fake_gpu: only gpu workers have it)")
        started = time.monotonic()
        with model_endpoint(engine_cfg) as endpoint:
            ready_s = round(time.monotonic() - started, 1)
            timeline.event(f"engine ready in {ready_s}s")
            settings = ExploreSettings(num_episodes=cfg.episodes, episodes_in_flight=4, max_in_flight=8, **tiny)
            t0 = timeline.samples[-1]["t"] if timeline.samples else 0
            result = await run_exploration(endpoint, specs, settings, ToolCallConfig(scope="as1"), work / "explore-1",
                                           "a1", progress=False)
            complete, rows = all_episodes(work / "explore-1", cfg.episodes)
            timeline.event(f"exploration done: {result.episodes_done} episodes in {result.elapsed_s:.0f}s, "
                           f"{len(result.failures)} failed")
            scaled_up = first_time(timeline.samples, lambda s: s["t"] >= t0 and s["replicas"] >= 2)
            down_s = await timeline.until(lambda s: s["replicas"] == 1, 180, "Serve removes the second replica")
            timeline.event(f"back to 1 replica {down_s}s after the run")
            results["engine"] = {
                "engine_ready_s": ready_s, "episodes": result.episodes_done, "episode_rows": rows,
                "failures": len(result.failures), "all_episodes_once": complete,
                "second_replica_at_s": scaled_up, "max_gpu_nodes": max(s["gpu_nodes"] for s in timeline.samples),
                "replica_removed_after_run_s": down_s, "exploration_s": round(result.elapsed_s, 1)}

            # -- 2. a worker holding exploration actors is lost mid-run ---------------------------
            timeline.event("scene 2: exploration actors on a cpu worker (explorer_node), killed mid-run")
            settings = ExploreSettings(num_episodes=cfg.loss_episodes, episodes_in_flight=2, max_in_flight=4,
                                       actor_resources={"explorer_node": 1}, **tiny)
            run = asyncio.ensure_future(run_exploration(endpoint, specs, settings, ToolCallConfig(scope="as2"),
                                                        work / "explore-2", "a2", progress=False))
            await timeline.until(lambda s: len(s.get("ExplorerActor", [])) == 2, 120, "actors placed on a cpu worker")
            while len(list((work / "explore-2" / "episodes").glob("*.parquet"))) < 2:
                await asyncio.sleep(0.5)
            victim = timeline.samples[-1]["ExplorerActor"][0]
            node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"].endswith(victim))
            killed = kill_node(node)
            timeline.event(f"killed node …{victim} ({killed} processes) with episodes in flight")
            result = await run
            complete, rows = all_episodes(work / "explore-2", cfg.loss_episodes)
            timeline.event(f"exploration done: {result.episodes_done} episodes ({result.episodes_rerun} run again "
                           f"after their actor was lost), {len(result.failures)} failed")
            results["node_loss"] = {"processes_killed": killed, "episodes": result.episodes_done, "episode_rows": rows,
                                    "episodes_rerun": result.episodes_rerun, "failures": len(result.failures),
                                    "failure_reasons": sorted({f["reason"] for f in result.failures}),
                                    "all_episodes_once": complete,
                                    "exploration_s": round(result.elapsed_s, 1)}
        timeline.event("engine removed")

        # -- 3. training workers wait for an added node ------------------------------------------
        await timeline.until(lambda s: s["gpu_nodes"] == 0, 180, "idle gpu workers removed")
        timeline.event("scene 3: training with workers that need fake_gpu (no gpu worker is up)")
        sft = work / "sft"
        sft_data(sft, 8)
        train = TrainSettings(num_workers=1, resources_per_worker={"fake_gpu": 1}, max_steps=2, batch_size=1,
                              effective_batch_size=2, checkpoint_every=1000, max_seq_len=2048)
        t0 = timeline.samples[-1]["t"]
        trained = await asyncio.to_thread(run_training, sft, work / "train", train, False)
        on_workers = {n for s in timeline.samples if s["t"] >= t0 for n in s.get("RayTrainWorker", [])}
        timeline.event(f"training done: {len(trained.history)} steps on {sorted(on_workers)}")
        results["train"] = {"steps": len(trained.history), "worker_nodes": sorted(on_workers),
                            "gpu_node_up_at_s": first_time(timeline.samples, lambda s: s["t"] >= t0 and s["gpu_nodes"] >= 1),
                            "wall_s": round(trained.elapsed_s, 1)}
    finally:
        sampler.cancel()
    return results


def checks(results: dict) -> list[tuple[str, bool]]:
    engine, loss, train = results.get("engine", {}), results.get("node_loss", {}), results.get("train", {})
    return [
        ("engine placed on an added gpu worker", engine.get("max_gpu_nodes", 0) >= 1),
        ("Serve added a second replica under load (on a second worker)",
         engine.get("second_replica_at_s") is not None and engine.get("max_gpu_nodes", 0) >= 2),
        ("Serve removed it after the run", engine.get("replica_removed_after_run_s") is not None),
        ("scene 1: every episode once, none failed", engine.get("all_episodes_once") and engine.get("failures") == 0),
        ("scene 2: every episode once after the node loss, none failed",
         loss.get("all_episodes_once") and loss.get("failures") == 0),
        ("training ran its steps on an added worker",
         train.get("steps") == 2 and bool(train.get("worker_nodes")) and "head" not in train.get("worker_nodes", [])),
    ]


def main() -> None:
    cfg = job_config(BenchAutoscaleConfig)
    work = Path(tempfile.mkdtemp(prefix="ste-as-", dir="/tmp"))  # short: Ray's socket paths are limited
    head, gcs = start_cluster(work)
    results: dict = {}
    error = None
    timeline = None
    try:
        ray.init(address=gcs, logging_level="WARNING", log_to_driver=False)  # the timeline is the output
        timeline = Timeline(ray.get_runtime_context().get_node_id())  # the only node yet: the head
        results = asyncio.run(scenes(cfg, work, timeline))
    except Exception as e:  # the checks below say what did not happen; the timeline shows where
        error = f"{type(e).__name__}: {e}"
        print(f"error: {error}", flush=True)
    finally:
        ray.shutdown()
        stop_cluster(head)
        shutil.rmtree(work, ignore_errors=True)
    passed = checks(results)
    out = {"benchmark": "autoscale", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
           "config": to_dict(cfg), "results": results, "error": error,
           "checks": {name: bool(ok) for name, ok in passed}, "events": timeline.events if timeline else [],
           "timeline": timeline.samples if timeline else []}
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(out, indent=1))
    print()
    print(format_table(["check", "result"], [[name, "ok" if ok else "FAILED"] for name, ok in passed]))
    print(f"results: {cfg.output}")
    sys.exit(0 if all(ok for _, ok in passed) and not error else 1)


if __name__ == "__main__":
    main()
