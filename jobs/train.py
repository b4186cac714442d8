"""Training: Ray Train fine-tunes the model on exploit's SFT data (LoRA or full, data-parallel,
resumable).

    python jobs/train.py                                              # outputs/exploit/sft → outputs/train
    python jobs/train.py --train.method full --train.num_workers 8 --train.use_gpu --train.deepspeed zero3
    python jobs/train.py --input outputs/exploit/sft --train.continual   # one adapter per CL batch
"""

import dataclasses
import json

from ste_ray.config import job_config, option, to_dict
from ste_ray.model import ModelNotFoundError
from ste_ray.report import format_table
from ste_ray.runs import OutputError, log_file, now, package_versions, prepare_location, read_manifest, update_manifest
from ste_ray.runtime import RayConfig, job_console, ray_cluster, run_job
from ste_ray.storage import Location
from ste_ray.train import TrainInputError, TrainSettings, loss_chart, run_training


@dataclasses.dataclass
class TrainConfig:
    """Fine-tune a model on the exploit stage's SFT data with Ray Train."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    train: TrainSettings = option(default_factory=TrainSettings, help="Training")
    input: str = option("outputs/exploit/sft", help="The SFT data: exploit's sft/ directory (or its s3:// URI)")
    output: str = option("outputs/train", help="Output directory or filesystem URI (adapter/ or model/, merged/, "
                                               "metrics.json, loss.png, ray_train/ checkpoints, logs/)")
    verbose: bool = option(False, help="Show Ray's logs live instead of writing them to the log file")


def main() -> None:
    cfg = job_config(TrainConfig)
    output = prepare_location(cfg.output)
    sft = Location.of(cfg.input)
    settings = to_dict(cfg.train)
    manifest = read_manifest(output)
    if manifest.get("status") == "finished" and manifest.get("settings") == settings \
            and manifest.get("input") == str(sft):
        print(f"{output} already holds this finished run ({manifest['steps']} steps); nothing to do")
        return
    with job_console(log_file(output, "train"), cfg.verbose) as console:
        with ray_cluster(cfg.ray):
            update_manifest(output, {"status": "running", "started": now(), "input": str(sft),
                                     "settings": settings, "packages": package_versions()})
            console.print(f"training {cfg.train.model} ({cfg.train.method}) on {sft} with "
                          f"{cfg.train.num_workers} workers")
            result = run_training(sft, output, cfg.train)
        history = result.history
        (output / "metrics.json").write_text(json.dumps({"history": history, "examples": result.examples,
                                                         "dropped_too_long": result.dropped_too_long,
                                                         "resumed_at": result.resumed_at,
                                                         "exported_step": result.exported_step}, indent=1))
        loss_chart(history, output / "loss.png", f"{cfg.train.method} fine-tuning of {cfg.train.model}")
        update_manifest(output, {"status": "finished", "finished": now(), "steps": history[-1]["step"],
                                 "exported_step": result.exported_step, "weights": [str(w) for w in result.weights]})
        rows = [[h["step"], h["epoch"], h["loss"], h.get("validation_loss") or "", h["tokens_per_s"], h["peak_memory_gib"]]
                for h in history if h.get("validation_loss") is not None or h is history[-1]]
        console.print()
        console.print(format_table(["step", "epoch", "loss", "validation loss", "tokens/s", "peak GiB"], rows))
        console.print(f"\n{history[-1]['step']} steps on {result.examples} examples in {result.elapsed_s:.0f}s"
                      + (f"; {result.dropped_too_long} longer than --train.max_seq_len dropped"
                         if result.dropped_too_long else "")
                      + (f"; resumed from checkpoints at steps {result.resumed_at}" if result.resumed_at else "")
                      + (f"; kept the weights of step {result.exported_step} (lowest validation loss)"
                         if result.exported_step != history[-1]["step"] else ""))
        console.print(f"wrote {', '.join(str(w) for w in result.weights)}, {output}/metrics.json, {output}/loss.png")


if __name__ == "__main__":
    run_job(main, expected=(TrainInputError, OutputError, ModelNotFoundError))
