"""The whole loop with one config: explore → exploit → train → serve → evaluate, each stage writing its
own directory under the pipeline's output. A stage whose output is complete (its manifest says
finished) is skipped when the pipeline runs again, so a crashed run continues where it stopped
(exploration resumes its episodes, exploitation its cached model calls, training its checkpoint).

The teacher's engine is started once for the stages that need it (exploration, the judge and the
paraphraser, the teacher's own benchmark figure); then the student is fine-tuned, served beside its
base model on one endpoint, and both are measured on the held-out benchmark queries of the explored
APIs: base, base with demonstrations from the explored data, fine-tuned, fine-tuned constrained.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Literal

from ste_ray.client import Endpoint
from ste_ray.config import option
from ste_ray.constrained import supports_structured_outputs
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.evaluate import EvalSettings, run_benchmark
from ste_ray.evaluate.chart import bar_chart
from ste_ray.evaluate.test_sets import load_test_set, run_test_set
from ste_ray.exploit import ExploitSettings, run_exploit
from ste_ray.exploit.report import funnel_table, write_report
from ste_ray.explore import ExploreSettings, check_output, run_exploration
from ste_ray.model import resolve_model
from ste_ray.report import markdown_table
from ste_ray.runs import atomic_write_text, now, package_versions, read_manifest, tool_specs_hash, update_manifest
from ste_ray.serve import ServeSettings, serve_models
from ste_ray.storage import Location
from ste_ray.tools.calls import ToolCallConfig
from ste_ray.tools.sources import ToolSource, select_tools
from ste_ray.train import TrainSettings, loss_chart, run_training

STAGES = ["explore", "exploit", "train", "evaluate"]  # serving is part of evaluate: the student is served, then measured
Stage = Literal["explore", "exploit", "train", "evaluate"]


@dataclasses.dataclass
class PipelineSettings:
    """Which stages run, and what the last one measures."""

    from_stage: Stage = option("explore", help="Run from this stage (earlier ones must be complete)")
    until_stage: Stage = option("evaluate", help="Stop after this stage")
    tools: list[ToolSource] = option(default_factory=lambda: [ToolSource("ste")], help="Tool sources, as for jobs/explore.py")
    apis: list[str] = option(default_factory=list, help="Only these APIs")
    teacher_eval_limit: int = option(
        5, help="Benchmark queries per API on which the teacher itself is measured (0: skip; it is slow on CPU)", ge=0)
    student_settings: list[str] = option(
        default_factory=lambda: ["top5", "top5+demos4"],
        help="Evaluation settings of the base student (demonstrations come from the exploit output)")
    tuned_settings: list[str] = option(default_factory=lambda: ["top5", "top5+constrained"],
                                       help="Evaluation settings of the fine-tuned student")
    test_set: str = option("", help="Also measure base and fine-tuned student on this test set (see jobs/evaluate.py "
                                    "--test-set), in the react and react+constrained formats")


@dataclasses.dataclass
class StageRun:
    name: str
    skipped: bool
    wall_s: float


def done(directory: Location) -> bool:
    return read_manifest(directory).get("status") == "finished"


class Pipeline:
    """The stages, in order; ``run`` executes those not done yet."""

    def __init__(self, output: Location, settings: PipelineSettings, teacher: EngineConfig, student: EngineConfig,
                 explore: ExploreSettings, tool_calls: ToolCallConfig, exploit: ExploitSettings, train: TrainSettings,
                 evaluation: EvalSettings, say: Callable[[str], None]):
        self.output, self.settings = output, settings
        self.teacher, self.student = teacher, student
        self.explore_settings = explore
        self.exploit_settings, self.train_settings, self.evaluation = exploit, train, evaluation
        self.say = say
        self.dirs = {stage: output / stage for stage in STAGES}
        self.specs, source_limits = select_tools(settings.tools, settings.apis)
        self.tool_calls = dataclasses.replace(tool_calls, per_tool={**source_limits, **tool_calls.per_tool})
        self.runs: list[StageRun] = []

    def wanted(self, stage: str) -> bool:
        first, last = STAGES.index(self.settings.from_stage), STAGES.index(self.settings.until_stage)
        return first <= STAGES.index(stage) <= last

    def timed(self, stage: str, work: Callable[[], None]) -> None:
        directory = self.dirs[stage]
        if done(directory) or not self.wanted(stage):
            self.runs.append(StageRun(stage, True, 0.0))
            self.say(f"{stage}: " + ("complete, skipped" if done(directory) else "not asked for"))
            return
        started = time.perf_counter()
        self.say(f"{stage}: running")
        directory.mkdir()
        work()
        self.runs.append(StageRun(stage, False, time.perf_counter() - started))
        update_manifest(self.output, {"stages": {r.name: {"skipped": r.skipped, "wall_s": round(r.wall_s, 1)}
                                                 for r in self.runs}})

    def run(self) -> dict[str, Any]:
        teacher_work = [s for s in ("explore", "exploit") if self.wanted(s) and not done(self.dirs[s])]
        teacher_eval = self.settings.teacher_eval_limit and self.wanted("evaluate") and \
            not (self.dirs["evaluate"] / "teacher.json").is_file()
        with contextlib.ExitStack() as stack:
            teacher = stack.enter_context(model_endpoint(self.teacher)) if teacher_work or teacher_eval else None
            self.timed("explore", lambda: self.explore(teacher))
            self.timed("exploit", lambda: self.exploit(teacher))
            if teacher_eval:
                self.evaluate_teacher(teacher)
        self.timed("train", self.train)
        self.timed("evaluate", self.serve_and_evaluate)
        return self.report()

    # -----------------------------------------------------------------------------------------

    def explore(self, teacher: Endpoint) -> None:
        output = self.dirs["explore"]
        check_output(output, resume=True)
        atomic_write_text(output / "tools.json", json.dumps([s.record() for s in self.specs], indent=1,
                                                            ensure_ascii=False))
        update_manifest(output, {"status": "running", "started": now(), "model": teacher.model,
                                 "apis": [s.name for s in self.specs],
                                 "tool_specs_sha256": tool_specs_hash(s.openai() for s in self.specs),
                                 "settings": dataclasses.asdict(self.explore_settings), "packages": package_versions()})
        result = asyncio.run(run_exploration(teacher, self.specs, self.explore_settings, self.tool_calls, output,
                                             uuid.uuid4().hex[:12]))
        update_manifest(output, {"status": "finished", "finished": now(), "episodes_done": result.episodes_done,
                                 "episodes_before": result.episodes_before, "failures": result.failures})

    def exploit(self, teacher: Endpoint) -> None:
        output = self.dirs["exploit"]
        constrained = asyncio.run(_probe(teacher))
        result = run_exploit(self.dirs["explore"], output, self.exploit_settings, teacher, None, constrained)
        write_report(output, result.funnel, result.datasets, result.judge_errors, [])
        update_manifest(output, {"status": "finished", "finished": now(), "funnel": result.funnel,
                                 "datasets": result.datasets, "judge_errors": result.judge_errors})

    def train(self) -> None:
        output = self.dirs["train"]
        settings = dataclasses.replace(self.train_settings, merge=True)
        result = run_training(self.dirs["exploit"] / "sft", output, settings)
        (output / "metrics.json").write_text(json.dumps({"history": result.history, "examples": result.examples,
                                                         "dropped_too_long": result.dropped_too_long,
                                                         "resumed_at": result.resumed_at}, indent=1))
        loss_chart(result.history, output / "loss.png", f"LoRA fine-tuning of {settings.model}")
        update_manifest(output, {"status": "finished", "finished": now(), "steps": result.history[-1]["step"],
                                 "examples": result.examples})

    def benchmark(self, endpoint: Endpoint, settings: list[str], model_dir: str | None, limit: int = 0) -> list:
        cfg = dataclasses.replace(self.evaluation, settings=settings, apis=[s.name for s in self.specs],
                                  limit=limit or self.evaluation.limit, demo_pool=self.dirs["exploit"].uri())
        return asyncio.run(run_benchmark(endpoint, cfg, self.student.max_model_len, model_dir, "none"))

    def evaluate_teacher(self, teacher: Endpoint) -> None:
        self.say(f"teacher: measured on {self.settings.teacher_eval_limit} queries per API")
        started = time.perf_counter()
        (result,) = self.benchmark(teacher, ["top5"], resolve_model(self.teacher.model), self.settings.teacher_eval_limit)
        atomic_write_text(self.dirs["evaluate"] / "teacher.json", json.dumps(
            {"model": self.teacher.model, "setting": result.setting, **result.scored.metrics,
             "wall_s": round(time.perf_counter() - started, 1)}, indent=1))

    def serve_and_evaluate(self) -> None:
        """The base student and the fine-tuned one on one endpoint (as jobs/serve.py serves them), both
        measured; the endpoint is removed at the end."""
        from ray import serve

        served = serve_models(self.student, ServeSettings(models={"base": self.train_settings.model,
                                                                   "tuned": self.dirs["train"].uri()}))
        try:
            self.evaluate(served)
        finally:
            serve.delete(self.student.app_name)

    def evaluate(self, served: Endpoint) -> None:
        output = self.dirs["evaluate"]
        rows = {}
        for name, settings in (("base", self.settings.student_settings), ("tuned", self.settings.tuned_settings)):
            endpoint = Endpoint(served.base_url, name, served.api_key)
            for r in self.benchmark(endpoint, settings, resolve_model(self.train_settings.model)):
                rows[f"{name} {r.setting}"] = {**r.scored.metrics, "wall_s": round(r.elapsed_s, 1)}
                (output / "predictions" / f"{name}-{r.setting}.json").write_text(json.dumps(r.predictions))
        if self.settings.test_set:
            cases = load_test_set(Path(self.settings.test_set), {s.name: s for s in self.specs})
            for name in ("base", "tuned"):
                results = asyncio.run(self.test_set(Endpoint(served.base_url, name, served.api_key), cases,
                                                    output / f"test_set-{name}"))
                for form, m in results.items():
                    rows[f"{name} test set ({form})"] = {"n": m["n"], "wellformed": m["wellformed"],
                                                         "api_match": m["name_match"], "correct": m["exact"],
                                                         "wall_s": m["wall_s"]}
        atomic_write_text(output / "metrics.json", json.dumps(rows, indent=1))
        update_manifest(output, {"status": "finished", "finished": now()})

    async def test_set(self, endpoint: Endpoint, cases: list, output: Location) -> dict[str, Any]:
        async with endpoint.client(max_concurrency=self.evaluation.max_in_flight) as client:
            return await run_test_set(client, cases, ["react", "react+constrained"], self.evaluation.max_tokens, output)

    # -----------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """report.md, outcome.png and the outcome as a dict (also the console table's rows)."""
        metrics = json.loads((self.dirs["evaluate"] / "metrics.json").read_text()) \
            if (self.dirs["evaluate"] / "metrics.json").is_file() else {}
        teacher_file = self.dirs["evaluate"] / "teacher.json"
        if teacher_file.is_file():
            teacher = json.loads(teacher_file.read_text())
            metrics[f"teacher {teacher['setting']} ({teacher['n']} queries)"] = teacher
        exploit = read_manifest(self.dirs["exploit"])
        train_metrics = self.dirs["train"] / "metrics.json"
        history = json.loads(train_metrics.read_text())["history"] if train_metrics.is_file() else []
        walls = read_manifest(self.output).get("stages", {})
        rows = [[name, m["n"], m["wellformed"], m["api_match"], m["correct"]] for name, m in metrics.items()]
        lines = ["# ste-ray pipeline report", "",
                 "Held-out STE benchmark queries of the explored APIs; `correct` by string match for every API.", "",
                 markdown_table(["model / setting", "n", "wellformed %", "api_match %", "correct %"], rows), ""]
        if exploit.get("funnel"):
            headers, funnel = funnel_table(exploit["funnel"])
            lines += ["## Data funnel", "", markdown_table(headers, funnel), ""]
        if history:
            lines += ["## Training", "", f"{history[-1]['step']} steps; loss {history[0]['loss']:.3f} → "
                      f"{history[-1]['loss']:.3f}", "", "![loss](train/loss.png)", ""]
        lines += ["## Wall time per stage", "",
                  markdown_table(["stage", "wall s", "skipped"], [[k, v["wall_s"], v["skipped"]] for k, v in walls.items()]),
                  "", "![outcome](outcome.png)", ""]
        (self.output / "report.md").write_text("\n".join(lines))
        if metrics:
            bar_chart([(name, m) for name, m in metrics.items()], self.output / "outcome.png", "STE benchmark, held out")
        return {"metrics": metrics, "funnel": exploit.get("funnel", []), "walls": walls, "rows": rows}


async def _probe(endpoint: Endpoint) -> bool:
    async with endpoint.client(max_retries=2) as client:
        return await supports_structured_outputs(client)
