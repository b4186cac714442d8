"""The training driver: the SFT data tokenized with Ray Data, Ray Train's ``TorchTrainer`` running the
recipe on ``num_workers`` workers, the trained adapter (or model) with its tokenizer, the metrics and
the loss curve. Everything that can be checked is checked before a worker starts.

Recovery: checkpoints go to ``<output>/ray_train/<run>`` (``RunConfig(storage_path, name)``); a worker
that dies restarts the run from the last checkpoint (``FailureConfig``), and running the job again
with the same output continues it (Ray Train 2.60 hands the run's latest checkpoint to the recipe).

Input and output may be a filesystem URI (``s3://``, ``ste_ray.storage``): Ray Data reads the SFT
data and Ray Train writes the checkpoints there directly; the weights, merged model and loss curve
are made in a local staging directory (transformers and PEFT write only local files) and uploaded.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import queue as queue_lib
import shutil
import time
from pathlib import Path
from typing import Any

import matplotlib
import ray
import ray.data
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue
from tqdm import tqdm

from ste_ray.engine import autoscaler_running
from ste_ray.model import resolve_model
from ste_ray.runtime import terminal
from ste_ray.schema import SFTExample, arrow_schema, read_dataset
from ste_ray.storage import Location
from ste_ray.train.data import Tokenize
from ste_ray.train.recipe import NOT_SCORED, SELECTION, STATE, train_worker
from ste_ray.train.settings import TrainSettings

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


class TrainInputError(ValueError):
    """Something that would make training fail, found before it starts."""


@dataclasses.dataclass
class Round:
    """One training run: the whole SFT set, or one continual-learning batch."""

    name: str  # "" for a single run, else "round_<k>"
    data: Location  # a directory with train/ and validation/


@dataclasses.dataclass
class TrainResult:
    output: Location
    weights: list[Location]  # the adapter (or model) directory of each round
    history: list[dict[str, Any]]  # the last round's steps
    resumed_at: list[int]  # the last round's restarts from a checkpoint, by step
    exported_step: int  # the last round's step whose weights were kept: the lowest validation loss
    dropped_too_long: int
    examples: int
    elapsed_s: float


# ---------------------------------------------------------------------------------------------
# Checks before training


def find_rounds(sft: str | Path | Location, continual: bool) -> list[Round]:
    sft = Location.of(sft)
    if not sft.is_dir():
        raise TrainInputError(f"input: {sft} is not a directory (give exploit's sft/ output)")
    batches = sorted((p for p in sft.subdirs() if p.name.startswith("batch_")), key=lambda p: int(p.name.split("_")[1]))
    if continual:
        if not batches:
            raise TrainInputError(f"input: --train.continual needs per-batch data ({sft}/batch_<k>/); "
                                  "run exploit with --exploit.batches")
        rounds = [Round(f"round_{p.name.split('_')[1]}", p) for p in batches]
    elif batches:
        raise TrainInputError(f"input: {sft} holds continual-learning batches; pass --train.continual, or give one "
                              f"batch ({batches[0]})")
    else:
        rounds = [Round("", sft)]
    expected = set(arrow_schema(SFTExample).names)
    for r in rounds:
        files = (r.data / "train").files()
        if not files:
            raise TrainInputError(f"input: {r.data}/train holds no Parquet files")
        missing = expected - set(files[0].read_schema().names)
        if missing:
            raise TrainInputError(f"input: {files[0]} is not SFT data (missing columns: {', '.join(sorted(missing))})")
        if not sum(f.num_rows() for f in files):
            raise TrainInputError(f"input: {r.data}/train has no examples")
    return rounds


def check_model(settings: TrainSettings) -> str:
    """The model directory, with a tokenizer and every LoRA target module."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve_model(settings.model)
    try:
        AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise TrainInputError(f"train.model: {model_dir} has no usable tokenizer ({str(e).splitlines()[0]})") from None
    if settings.method == "lora":
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [m for m in settings.lora_target_modules if m not in names]
        if missing:
            raise TrainInputError(f"train.lora_target_modules: {', '.join(missing)} not in {model_dir} "
                                  f"(its linear layers: {', '.join(sorted(n for n in names if n.endswith('proj')))})")
    return model_dir


def check_workers(settings: TrainSettings) -> None:
    """The workers must fit the cluster's nodes (a cluster with an autoscaler is trusted to grow)."""
    per_worker = {"CPU": settings.cpus_per_worker, **({"GPU": 1} if settings.use_gpu else {}),
                  **settings.resources_per_worker}
    free = [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
    for _ in range(settings.num_workers):
        node = next((n for n in free if all(n.get(k, 0) >= v for k, v in per_worker.items())), None)
        if node is None:
            if autoscaler_running():
                return
            have = {k: sum(n.get(k, 0) for n in [dict(m["Resources"]) for m in ray.nodes() if m["Alive"]])
                    for k in per_worker}
            raise TrainInputError(
                f"train.num_workers: {settings.num_workers} workers of {per_worker} can never be placed on this "
                f"cluster ({', '.join(f'{v:g} {k}' for k, v in have.items())}); use fewer workers or add nodes")
        for key, value in per_worker.items():
            node[key] -= value


# ---------------------------------------------------------------------------------------------
# Data


def tokenized(directory: Location, model_dir: str, max_seq_len: int, toolkens: dict[str, str]
              ) -> tuple[ray.data.Dataset, int, int]:
    """The split's tokenized examples (materialized: the trainer reads them every epoch), how many
    fit, and how many were dropped for length; each toolken is one new token, as in the model."""
    files = directory.files()
    if not files:
        return ray.data.from_items([]), 0, 0
    ds = read_dataset(files, SFTExample, ["messages"]).map_batches(
        Tokenize(model_dir, max_seq_len, toolkens), batch_format="pyarrow").materialize()
    too_long = ds.filter(expr="too_long == True").count()
    kept = ds.filter(expr="too_long == False").drop_columns(["too_long"]).materialize()
    return kept, kept.count(), too_long


# ---------------------------------------------------------------------------------------------
# Running


class ProgressCallback(UserCallback):
    """Runs in Ray Train's controller: hands rank 0's metrics of each step to the driver."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.queue.put(metrics[0])


def best_checkpoint(result) -> tuple[ray.train.Checkpoint, int]:
    """The checkpoint to keep, and its step: the epoch end with the lowest validation loss, or the
    last one when there is no validation data."""
    scored = [(m[SELECTION], -m["step"], c, m["step"]) for c, m in result.best_checkpoints or []
              if (m.get(SELECTION) or NOT_SCORED) < NOT_SCORED]
    if not scored:
        return result.checkpoint, result.metrics["step"]
    *_, checkpoint, step = min(scored, key=lambda s: s[:2])
    return checkpoint, step


def run_round(r: Round, output: Location, staging: Path, settings: TrainSettings, model_dir: str,
              toolkens: dict[str, str], start_weights: str | None, progress: bool) -> tuple[str, dict[str, Any], int, int]:
    """One training run, from ``start_weights`` (the previous round's, a path or URI) if given;
    returns its weights directory relative to ``output`` (made in ``staging``, then uploaded: the
    best checkpoint's, see ``best_checkpoint``), its final trainer state (history, restarts, the
    step exported) and its example counts."""
    train, n_train, long_train = tokenized(r.data / "train", model_dir, settings.max_seq_len, toolkens)
    validation, _, long_validation = tokenized(r.data / "validation", model_dir, settings.max_seq_len, toolkens)
    steps_per_epoch = n_train // settings.effective_batch_size
    if steps_per_epoch == 0:
        raise TrainInputError(f"input: {r.data}/train has {n_train} usable examples, fewer than one effective batch "
                              f"({settings.effective_batch_size}); lower --train.effective_batch_size")
    total = steps_per_epoch * settings.epochs
    total = min(total, settings.max_steps) if settings.max_steps else total
    cfg = {**dataclasses.asdict(settings), "model_dir": model_dir, "toolkens": toolkens, "start_weights": start_weights,
           "learning_rate": settings.peak_learning_rate, "steps_per_epoch": steps_per_epoch, "total_steps": total}
    queue = Queue()
    trainer = TorchTrainer(
        train_worker, train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker,
                                                           **settings.resources_per_worker}),
        run_config=RunConfig(name=r.name or "train", storage_path=(output / "ray_train").path,
                             storage_filesystem=output.fs,
                             failure_config=FailureConfig(max_failures=settings.max_failures),
                             # The best checkpoint by validation loss, and always the latest (to resume from).
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SELECTION,
                                                                checkpoint_score_order="min"),
                             callbacks=[ProgressCallback(queue)],
                             worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}} if settings.deepspeed and not settings.use_gpu else None),
        datasets={"train": train, "validation": validation})
    bar = tqdm(total=total, desc=f"train {r.name}".strip(), unit="step", disable=not progress, file=terminal())
    # fit() blocks, and Ray Train has no asynchronous form: it runs beside the loop that shows progress.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        fitting = pool.submit(trainer.fit)
        while not (fitting.done() and queue.empty()):
            try:
                entry = queue.get(timeout=1.0)
            except queue_lib.Empty:
                continue
            bar.n = entry["step"]
            bar.set_postfix_str(f"loss {entry['loss']:.3f}, {entry['tokens_per_s']:.0f} tok/s"
                                + (f", val {entry['validation_loss']:.3f}" if entry.get("validation_loss") else ""))
            bar.refresh()
        result = fitting.result()
    bar.close()
    relative = f"{r.name}/{weights_name(settings)}" if r.name else weights_name(settings)
    weights = staging / relative
    with result.checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / STATE).read_text())  # the whole history: the last checkpoint's
    best, state["exported_step"] = best_checkpoint(result)
    with best.as_directory() as directory:
        if weights.exists():
            shutil.rmtree(weights)
        shutil.copytree(directory, weights, ignore=shutil.ignore_patterns(STATE, "optimizer.pt", "deepspeed", "latest",
                                                                          "zero_to_fp32.py"))
    (output / relative).upload(weights)
    return relative, state, n_train, long_train + long_validation


# Where a training output keeps its weights, by method (serving looks for both).
WEIGHTS_DIRS = {"lora": "adapter", "full": "model"}


def weights_name(settings: TrainSettings) -> str:
    return WEIGHTS_DIRS[settings.method]


def merge_adapter(adapter: Path, model_dir: str, target: Path) -> None:
    """The base model with the LoRA adapter folded into its weights, and the adapter's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    if len(tokenizer) != base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    if target.exists():
        shutil.rmtree(target)
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)


def run_training(sft: str | Path | Location, output: str | Path | Location, settings: TrainSettings,
                 progress: bool = True, start_weights: str | None = None) -> TrainResult:
    """Train every round (see the module docstring), the first from ``start_weights`` (an earlier
    training's adapter, a path or URI) if given; the weights of the last round are the result."""
    started = time.perf_counter()
    sft, output = Location.of(sft), Location.of(output)
    rounds = find_rounds(sft, settings.continual)
    model_dir = check_model(settings)
    check_workers(settings)
    toolkens_file = sft / "toolkens.json"
    # token → the API it names, in token order (the order the new token ids are given in)
    toolkens = dict(sorted((token, api) for api, token in json.loads(toolkens_file.read_text()).items())) \
        if toolkens_file.is_file() else {}
    staging = output.staging_dir("train")
    weights: list[str] = []  # relative to output (and to staging)
    state: dict[str, Any] = {}
    examples = dropped = 0
    previous = start_weights
    for r in rounds:
        done, state, n, too_long = run_round(r, output, staging, settings, model_dir, toolkens, previous, progress)
        weights.append(done)
        examples += n
        dropped += too_long
        previous = (output / done).uri()  # the next round continues from these weights
    if settings.merge and settings.method == "lora":
        merge_adapter(staging / weights[-1], resolve_model(settings.model), staging / "merged")
        (output / "merged").upload(staging / "merged")
    return TrainResult(output, [output / w for w in weights], state["history"], state["resumed_at"],
                       state["exported_step"], dropped, examples, time.perf_counter() - started)


def loss_chart(history: list[dict[str, Any]], path: Path | Location, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="training loss")
    validation = [h for h in history if h.get("validation_loss") is not None]
    if validation:
        ax.plot([h["step"] for h in validation], [h["validation_loss"] for h in validation], "o-",
                label="validation loss (epoch end)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Location.of(path).write_figure(fig)
    plt.close(fig)

