"""The whole loop with one config: explore → exploit → train → serve → evaluate, each stage writing its
own directory under the pipeline's output. A stage whose output is complete (its manifest says
finished) is skipped when the pipeline runs again, so a crashed run continues where it stopped
(exploration resumes its episodes, exploitation its cached model calls, training its checkpoint).

The teacher's engine is started once for the stages that need it (exploration, the judge and the
paraphraser, the teacher's own benchmark figure); then the student is fine-tuned, served beside its
base model on one endpoint, and both are measured on the held-out benchmark queries of the explored
APIs: base, base with demonstrations from the explored data, fine-tuned, fine-tuned constrained.

Iterated STE (``--pipeline.rounds 2`` or more): round k explores again with round k-1's fine-tuned
student making the calls (served beside the teacher, which still writes the requests and the final
answers from the calls' results, judges and paraphrases: the student learned calls, not requests or
answers), starting from the requests of the rounds before it in long-term memory; it is exploited
like round 1, and trained on from round k-1's weights. Each
round's student is measured. Stage directories: explore, exploit, train, then explore_2, exploit_2,
train_2, ..., evaluate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from ste_ray.client import Endpoint
from ste_ray.config import fail, option
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
from ste_ray.train.run import weights_name

ROUND_STAGES = ["explore", "exploit", "train"]  # serving is part of evaluate: the students are served, then measured


def suffix(round_number: int) -> str:
    """Round 1's stages are explore, exploit, train (and its student 'tuned'); round k's carry _k."""
    return "" if round_number == 1 else f"_{round_number}"


def stage_names(rounds: int) -> list[str]:
    return [f"{stage}{suffix(k)}" for k in range(1, rounds + 1) for stage in ROUND_STAGES] + ["evaluate"]


@dataclasses.dataclass
class PipelineSettings:
    """Which stages run, and what the last one measures."""

    from_stage: str = option("explore", help="Run from this stage (earlier ones must be complete): explore, exploit, "
                                             "train, their round-k forms explore_k, exploit_k, train_k, or evaluate")
    until_stage: str = option("evaluate", help="Stop after this stage")
    rounds: int = option(1, help="Exploration rounds (iterated STE): round k >= 2 explores with round k-1's fine-tuned "
                                 "student making the trials and trains on from its weights", ge=1)
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

    def validate(self) -> None:
        names = stage_names(self.rounds)
        for name in ("from_stage", "until_stage"):
            if getattr(self, name) not in names:
                fail(name, f"{getattr(self, name)!r} is not a stage of {self.rounds} round(s): {', '.join(names)}")
        if names.index(self.from_stage) > names.index(self.until_stage):
            fail("from_stage", f"{self.from_stage!r} comes after until_stage {self.until_stage!r}")


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
        self.stages = stage_names(settings.rounds)
        self.dirs = {stage: output / stage for stage in self.stages}
        self.specs, source_limits = select_tools(settings.tools, settings.apis)
        self.tool_calls = dataclasses.replace(tool_calls, per_tool={**source_limits, **tool_calls.per_tool})
        self.runs: list[StageRun] = []

    def dir(self, stage: str, k: int) -> Location:
        """The output directory of ``stage`` (explore, exploit or train) in round ``k``."""
        return self.dirs[f"{stage}{suffix(k)}"]

    def wanted(self, stage: str) -> bool:
        first, last = self.stages.index(self.settings.from_stage), self.stages.index(self.settings.until_stage)
        return first <= self.stages.index(stage) <= last

    def complete(self, stage: str) -> bool:
        """Finished; for evaluate, also with a row for every student (a round may have been added)."""
        return done(self.dirs[stage]) and (stage != "evaluate" or not self.unmeasured())

    def pending(self, stage: str) -> bool:
        return self.wanted(stage) and not self.complete(stage)

    def timed(self, stage: str, work: Callable[[], None]) -> None:
        directory = self.dirs[stage]
        complete = self.complete(stage)
        if complete or not self.wanted(stage):
            earlier = read_manifest(self.output).get("stages", {}).get(stage, {})  # its time in the run that did it
            self.runs.append(StageRun(stage, True, earlier.get("wall_s", 0.0) if complete else 0.0))
            self.say(f"{stage}: " + ("complete, skipped" if complete else "not asked for"))
            return
        started = time.perf_counter()
        self.say(f"{stage}: running")
        directory.mkdir()
        work()
        self.runs.append(StageRun(stage, False, time.perf_counter() - started))
        update_manifest(self.output, {"stages": {r.name: {"skipped": r.skipped, "wall_s": round(r.wall_s, 1)}
                                                 for r in self.runs}})

    def run(self) -> dict[str, Any]:
        for k in range(1, self.settings.rounds + 1):
            self.run_round(k)
        self.timed("evaluate", self.serve_and_evaluate)
        return self.report()

    def run_round(self, k: int) -> None:
        """Exploration and exploitation with the teacher's engine (and, from round 2, the previous
        round's student as the explorer), then training once the engines are gone."""
        explore, exploit, train = (f"{stage}{suffix(k)}" for stage in ROUND_STAGES)
        teacher_eval = k == 1 and self.settings.teacher_eval_limit and self.wanted("evaluate") and \
            not (self.dirs["evaluate"] / "teacher.json").is_file()
        needs_teacher = self.pending(explore) or self.pending(exploit) or teacher_eval
        with model_endpoint(self.teacher) if needs_teacher else contextlib.nullcontext() as teacher:
            student = self.served_student(k - 1) if k > 1 and self.pending(explore) else None
            with student or contextlib.nullcontext(teacher) as explorer:  # the student only while it explores
                self.timed(explore, lambda: self.explore(k, explorer, teacher))
            self.timed(exploit, lambda: self.exploit(k, teacher))
            if teacher_eval:
                self.evaluate_teacher(teacher)
        self.timed(train, lambda: self.train(k))

    @contextlib.contextmanager
    def served_student(self, k: int) -> Iterator[Endpoint]:
        """Round k's fine-tuned student as an explorer, beside the teacher's endpoint on its own route."""
        from ray import serve

        engine = dataclasses.replace(self.student, app_name=f"{self.student.app_name}-explorer")
        name = f"tuned{suffix(k)}"
        self.say(f"explore{suffix(k + 1)}: serving {name} as the explorer")
        served = serve_models(engine, ServeSettings(models={name: self.dir("train", k).uri()}),
                              route_prefix="/explorer")
        try:
            yield served
        finally:
            serve.delete(engine.app_name)

    # -----------------------------------------------------------------------------------------

    def explore(self, k: int, explorer: Endpoint, teacher: Endpoint) -> None:
        output = self.dir("explore", k)
        check_output(output, resume=True)
        imaginer = teacher if explorer is not teacher else None
        atomic_write_text(output / "tools.json", json.dumps([s.record() for s in self.specs], indent=1,
                                                            ensure_ascii=False))
        update_manifest(output, {"status": "running", "started": now(), "model": explorer.model,
                                 "imaginer": imaginer.model if imaginer else None, "round": k,
                                 "apis": [s.name for s in self.specs],
                                 "tool_specs_sha256": tool_specs_hash(s.openai() for s in self.specs),
                                 "settings": dataclasses.asdict(self.explore_settings), "packages": package_versions()})
        earlier = [self.dir("explore", j) for j in range(1, k)]
        result = asyncio.run(run_exploration(explorer, self.specs, self.explore_settings, self.tool_calls, output,
                                             uuid.uuid4().hex[:12], imaginer=imaginer, earlier_rounds=earlier))
        update_manifest(output, {"status": "finished", "finished": now(), "episodes_done": result.episodes_done,
                                 "episodes_before": result.episodes_before, "failures": result.failures})

    def exploit(self, k: int, teacher: Endpoint) -> None:
        output = self.dir("exploit", k)
        constrained = asyncio.run(_probe(teacher))
        result = run_exploit(self.dir("explore", k), output, self.exploit_settings, teacher, None, constrained)
        write_report(output, result.funnel, result.datasets, result.judge_errors, [])
        update_manifest(output, {"status": "finished", "finished": now(), "funnel": result.funnel,
                                 "datasets": result.datasets, "judge_errors": result.judge_errors})

    def train(self, k: int) -> None:
        output = self.dir("train", k)
        settings = dataclasses.replace(self.train_settings, merge=True)
        start = (self.dir("train", k - 1) / weights_name(settings)).uri() if k > 1 else None
        result = run_training(self.dir("exploit", k) / "sft", output, settings, start_weights=start)
        (output / "metrics.json").write_text(json.dumps({"history": result.history, "examples": result.examples,
                                                         "dropped_too_long": result.dropped_too_long,
                                                         "resumed_at": result.resumed_at, "start_weights": start},
                                                        indent=1))
        loss_chart(result.history, output / "loss.png", f"LoRA fine-tuning of {settings.model}"
                   + (f", round {k}" if k > 1 else ""))
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

    def students(self) -> dict[str, tuple[str, list[str]]]:
        """Served name → (what to serve, evaluation settings): the base student and each round's."""
        tuned = {f"tuned{suffix(k)}": (self.dir("train", k).uri(), self.settings.tuned_settings)
                 for k in range(1, self.settings.rounds + 1)}
        return {"base": (self.train_settings.model, self.settings.student_settings), **tuned}

    def measured(self) -> dict[str, dict[str, Any]]:
        metrics = self.dirs["evaluate"] / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.is_file() else {}

    def unmeasured(self) -> dict[str, tuple[str, list[str]]]:
        """The students of ``students()`` that lack a row in metrics.json."""
        rows = self.measured()
        return {name: (source, settings) for name, (source, settings) in self.students().items()
                if any(f"{name} {setting}" not in rows for setting in settings)
                or (self.settings.test_set and f"{name} test set (react)" not in rows)}

    def serve_and_evaluate(self) -> None:
        """The base student and the fine-tuned ones on one endpoint (as jobs/serve.py serves them),
        each measured; the endpoint is removed at the end. Students already measured (before a
        crash, or before a round was added) are not measured again."""
        from ray import serve

        rows, wanted = self.measured(), self.unmeasured()
        if wanted:
            served = serve_models(self.student, ServeSettings(models={n: src for n, (src, _) in wanted.items()}))
            try:
                for name, (_, settings) in wanted.items():
                    rows.update(self.evaluate(Endpoint(served.base_url, name, served.api_key), settings))
                    atomic_write_text(self.dirs["evaluate"] / "metrics.json", json.dumps(rows, indent=1))
            finally:
                serve.delete(self.student.app_name)
        update_manifest(self.dirs["evaluate"], {"status": "finished", "finished": now()})

    def evaluate(self, endpoint: Endpoint, settings: list[str]) -> dict[str, dict[str, Any]]:
        output = self.dirs["evaluate"]
        rows = {}
        for r in self.benchmark(endpoint, settings, resolve_model(self.train_settings.model)):
            rows[f"{endpoint.model} {r.setting}"] = {**r.scored.metrics, "wall_s": round(r.elapsed_s, 1)}
            (output / "predictions" / f"{endpoint.model}-{r.setting}.json").write_text(json.dumps(r.predictions))
        if self.settings.test_set:
            cases = load_test_set(Path(self.settings.test_set), {s.name: s for s in self.specs})
            results = asyncio.run(self.test_set(endpoint, cases, output / f"test_set-{endpoint.model}"))
            for form, m in results.items():
                rows[f"{endpoint.model} test set ({form})"] = {"n": m["n"], "wellformed": m["wellformed"],
                                                               "api_match": m["name_match"], "correct": m["exact"],
                                                               "wall_s": m["wall_s"]}
        return rows

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
        walls = read_manifest(self.output).get("stages", {})
        rows = [[name, m["n"], m["wellformed"], m["api_match"], m["correct"]] for name, m in metrics.items()]
        lines = ["# ste-ray pipeline report", "",
                 "Held-out STE benchmark queries of the explored APIs; `correct` by string match for every API.", "",
                 markdown_table(["model / setting", "n", "wellformed %", "api_match %", "correct %"], rows), ""]
        funnels = {}
        for k in range(1, self.settings.rounds + 1):
            of_round = f", round {k}" if self.settings.rounds > 1 else ""
            funnel = read_manifest(self.dir("exploit", k)).get("funnel")
            if funnel:
                funnels[k] = funnel
                headers, table = funnel_table(funnel)
                lines += [f"## Data funnel{of_round}", "", markdown_table(headers, table), ""]
            train = self.dir("train", k)
            if (train / "metrics.json").is_file():
                history = json.loads((train / "metrics.json").read_text())["history"]
                lines += [f"## Training{of_round}", "", f"{history[-1]['step']} steps; loss {history[0]['loss']:.3f} → "
                          f"{history[-1]['loss']:.3f}", "", f"![loss]({train.name}/loss.png)", ""]
        lines += ["## Wall time per stage", "",
                  markdown_table(["stage", "wall s", "skipped"], [[k, v["wall_s"], v["skipped"]] for k, v in walls.items()]),
                  "", "![outcome](outcome.png)", ""]
        (self.output / "report.md").write_text("\n".join(lines))
        if metrics:
            bar_chart([(name, m) for name, m in metrics.items()], self.output / "outcome.png", "STE benchmark, held out")
        return {"metrics": metrics, "funnel": funnels.get(1, []), "later_funnels": {f"round_{k}": f for k, f in
                                                                                  funnels.items() if k > 1},
                "walls": walls, "rows": rows}


async def _probe(endpoint: Endpoint) -> bool:
    async with endpoint.client(max_retries=2) as client:
        return await supports_structured_outputs(client)
