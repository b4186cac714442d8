"""The whole loop: explore → exploit → train → serve → evaluate, with one config, each stage in its
own directory under --output; a stage already complete is skipped, so a rerun continues a crashed run.

    python jobs/pipeline.py                                  # the teacher explores, the embedded model learns
    python jobs/pipeline.py --output runs/p1 --from train    # from training on (earlier stages complete)
    python jobs/pipeline.py --teacher.model /models/Qwen2.5-72B-Instruct --teacher.gpus_per_replica 4
"""

import dataclasses
import json
import time
from typing import ClassVar

from ste_ray.client import LLMError
from ste_ray.config import Alias, job_config, option, to_dict
from ste_ray.engine import EngineConfig, EngineUnplaceable
from ste_ray.evaluate import EvalSettings
from ste_ray.exploit import ExploitInputError, ExploitSettings
from ste_ray.explore import ExploreSettings
from ste_ray.model import ModelNotFoundError
from ste_ray.pipeline import Pipeline, PipelineSettings
from ste_ray.report import format_table
from ste_ray.runs import OutputError, log_file, now, package_versions, prepare_location, update_manifest
from ste_ray.runtime import RayConfig, job_console, ray_cluster, run_job
from ste_ray.tools.calls import ToolCallConfig
from ste_ray.tools.spec import ToolSpecError
from ste_ray.train import TrainInputError, TrainSettings


@dataclasses.dataclass
class PipelineConfig:
    """Explore, exploit, train, serve and evaluate, with one config."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    pipeline: PipelineSettings = option(default_factory=PipelineSettings, help="Stages and measurements")
    teacher: EngineConfig = option(
        default_factory=lambda: EngineConfig(model="teacher", served_model_name="teacher", app_name="ste-teacher",
                                             max_model_len=4096, cpu_kv_cache_gib=3.0),
        help="The explorer, judge and paraphraser (default: Qwen2.5-Coder-1.5B-Instruct)")
    student: EngineConfig = option(default_factory=lambda: EngineConfig(max_model_len=4096),
                                   help="How the student, base and fine-tuned, is served for evaluation")
    explore: ExploreSettings = option(
        default_factory=lambda: ExploreSettings(imagination="grounded", num_episodes=8, num_stm_slots=2, max_turn=2,
                                                turn_max_tokens=256),
        help="Exploration by the teacher")
    tool_calls: ToolCallConfig = option(default_factory=ToolCallConfig, help="Tool-call limits")
    exploit: ExploitSettings = option(default_factory=ExploitSettings, help="Exploitation")
    # Full fine-tuning and 8 episodes per API measured best for the embedded student (README, "The pipeline").
    train: TrainSettings = option(default_factory=lambda: TrainSettings(method="full"),
                                  help="Fine-tuning of the student (default: full fine-tuning)")
    eval: EvalSettings = option(default_factory=lambda: EvalSettings(max_in_flight=16), help="The measurement")
    output: str = option("outputs/pipeline", help="Output directory or filesystem URI (s3://...): one directory per "
                                                  "stage, report.md, outcome.png")
    verbose: bool = option(False, help="Show Ray's and vLLM's logs live instead of writing them to the log file")

    aliases: ClassVar = (Alias("from", "Shorthand for --pipeline.from_stage", {"pipeline.from_stage": "{}"}),
                         Alias("until", "Shorthand for --pipeline.until_stage", {"pipeline.until_stage": "{}"}))


def main() -> None:
    cfg = job_config(PipelineConfig)
    output = prepare_location(cfg.output)
    started = time.perf_counter()
    with job_console(log_file(output, "pipeline"), cfg.verbose) as console:
        with ray_cluster(cfg.ray):
            update_manifest(output, {"status": "running", "started": now(), "config": to_dict(cfg),
                                     "packages": package_versions()})
            pipeline = Pipeline(output, cfg.pipeline, cfg.teacher, cfg.student, cfg.explore, cfg.tool_calls, cfg.exploit,
                                cfg.train, cfg.eval, console.print)
            outcome = pipeline.run()
        outcome["wall_s"] = round(time.perf_counter() - started, 1)
        update_manifest(output, {"status": "finished", "finished": now(), "outcome": outcome["summary"],
                                 "wall_s": outcome["wall_s"]})
        (output / "outcome.json").write_text(json.dumps(outcome, indent=1))
        headers = ["model / setting", "seeds", "n", "wellformed %", "api_match %", "correct %"]
        for split, title in (("test", "held-out test queries"), ("dev", "development queries")):
            if outcome["rows"][split]:
                console.print(f"\n{title}:")
                console.print(format_table(headers, outcome["rows"][split]))
        console.print("\n" + ", ".join(f"{k} {v['wall_s']:.0f}s" + (" (skipped)" if v["skipped"] else "")
                                       for k, v in outcome["walls"].items()) + f"; in all {outcome['wall_s']:.0f}s")
        console.print(f"wrote {output}/report.md, {output}/outcome.png, {output}/outcome.json")


if __name__ == "__main__":
    run_job(main, expected=(ToolSpecError, OutputError, LLMError, EngineUnplaceable, ModelNotFoundError,
                            ExploitInputError, TrainInputError))
