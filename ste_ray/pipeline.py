"""The whole loop with one config: explore → exploit → train → serve → evaluate, each stage writing its
own directory under the pipeline's output. A stage whose output is complete (its manifest says
finished) is skipped when the pipeline runs again, so a crashed run continues where it stopped
(exploration resumes its episodes, exploitation its cached model calls, training its checkpoint).

The teacher's engine is started once for the stages that need it (exploration, the judge and the
paraphraser, the teacher's own benchmark figure); then the student is fine-tuned once per training
seed (``--pipeline.seeds``), and the base student and every fine-tuned one are served and measured
on two sets of queries: the development set (the requests of the episodes exploitation held out,
with their verified calls: what settings are chosen on) and the benchmark's held-out test queries
of the explored APIs (read only for the report; ``--pipeline.test_queries false`` while tuning).
The report gives each fine-tuned row as the mean and spread over the seeds.

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
import functools
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from ste_ray.client import Endpoint
from ste_ray.config import fail, option
from ste_ray.constrained import supports_structured_outputs
from ste_ray.embeddings import Retriever
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.evaluate import EvalSettings, run_benchmark
from ste_ray.evaluate.scoring import errors_by_api
from ste_ray.evaluate.chart import bar_chart
from ste_ray.evaluate.test_sets import load_test_set, run_test_set
from ste_ray.exploit import ExploitSettings, run_exploit
from ste_ray.exploit.report import funnel_table, write_report
from ste_ray.exploit.run import DEV_QUERIES
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

TEACHER_STAGE, TEACHER_FILE = "teacher's benchmark", "teacher.json"  # in round 1, with the teacher's engine
ROUND_STAGES = ["explore", "exploit", "train"]  # serving is part of evaluate: the students are served, then measured
SPLITS = ("dev", "test")  # the development queries (exploit's dev_queries.json), the benchmark's held-out test queries


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
    seeds: list[int] = option(default_factory=lambda: [0],
                              help="Training seeds: the student is fine-tuned and measured once per seed, and the "
                                   "report gives the mean and spread (e.g. 0,1,2)")
    test_queries: bool = option(True, help="Measure on the benchmark's held-out test queries (students and teacher); "
                                           "false while choosing settings on the development set")
    teacher_eval_limit: int = option(
        15, help="Test queries per API on which the teacher itself is measured (15: all, the students' queries; 0: "
                 "skip)", ge=0)
    student_settings: list[str] = option(
        default_factory=lambda: ["top5", "top5+demos4"],
        help="Evaluation settings of the base student on the test queries (demonstrations come from the exploit "
             "output); on the development queries: the first")
    tuned_settings: list[str] = option(default_factory=lambda: ["top5", "top5+constrained"],
                                       help="Evaluation settings of each fine-tuned student, on both query sets")
    test_set: str = option("", help="Also measure base and fine-tuned student on this test set (see jobs/evaluate.py "
                                    "--test-set), in the react and react+constrained formats")

    def validate(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            fail("seeds", f"needs at least one seed, each once; got {self.seeds}")
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
        self.earlier_runs = read_manifest(output).get("stages", {})  # a stage skipped now keeps its time from these

    def dir(self, stage: str, k: int) -> Location:
        """The output directory of ``stage`` (explore, exploit or train) in round ``k``."""
        return self.dirs[f"{stage}{suffix(k)}"]

    def train_dir(self, k: int, seed: int) -> Location:
        """Round ``k``'s training output of one seed."""
        return self.dir("train", k) / f"seed_{seed}"

    def wanted(self, stage: str) -> bool:
        first, last = self.stages.index(self.settings.from_stage), self.stages.index(self.settings.until_stage)
        return first <= self.stages.index(stage) <= last

    def complete(self, stage: str) -> bool:
        """Finished; for training, every seed; for evaluate, with a row for every student (a round or
        a seed may have been added)."""
        if stage.startswith("train"):
            k = self.stages.index(stage) // len(ROUND_STAGES) + 1
            return all(done(self.train_dir(k, seed)) for seed in self.settings.seeds)
        return done(self.dirs[stage]) and (stage != "evaluate" or not self.unmeasured())

    def pending(self, stage: str) -> bool:
        return self.wanted(stage) and not self.complete(stage)

    def timed(self, stage: str, work: Callable[[], None]) -> None:
        directory = self.dirs[stage]
        complete = self.complete(stage)
        if complete or not self.wanted(stage):
            self.record(stage, None)
            self.say(f"{stage}: " + ("complete, skipped" if complete else "not asked for"))
            return
        started = time.perf_counter()
        self.say(f"{stage}: running")
        directory.mkdir()
        work()
        self.record(stage, time.perf_counter() - started)

    def record(self, stage: str, wall_s: float | None) -> None:
        """A stage's line of the manifest's wall times: ``wall_s`` for work done in this run, None for
        a stage skipped (with its time in the earlier run that did it, if one did)."""
        if wall_s is None:
            self.runs.append(StageRun(stage, True, self.earlier_runs.get(stage, {}).get("wall_s", 0.0)))
        else:
            self.runs.append(StageRun(stage, False, wall_s))
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
        teacher_eval = k == 1 and self.settings.test_queries and self.settings.teacher_eval_limit and \
            self.wanted("evaluate") and not (self.dirs["evaluate"] / TEACHER_FILE).is_file()
        needs_teacher = self.pending(explore) or self.pending(exploit) or teacher_eval
        with model_endpoint(self.teacher) if needs_teacher else contextlib.nullcontext() as teacher:
            student = self.served_student(k - 1) if k > 1 and self.pending(explore) else None
            with student or contextlib.nullcontext(teacher) as explorer:  # the student only while it explores
                self.timed(explore, lambda: self.explore(k, explorer, teacher))
            self.timed(exploit, lambda: self.exploit(k, teacher))
            if teacher_eval:
                self.evaluate_teacher(teacher)
            elif k == 1 and (self.dirs["evaluate"] / TEACHER_FILE).is_file():  # measured by an earlier run
                self.record(TEACHER_STAGE, None)
        self.timed(train, lambda: self.train(k))

    @contextlib.contextmanager
    def served_student(self, k: int) -> Iterator[Endpoint]:
        """Round k's fine-tuned student (of the first seed) as an explorer, beside the teacher's
        endpoint on its own route."""
        from ray import serve

        engine = dataclasses.replace(self.student, app_name=f"{self.student.app_name}-explorer")
        seed = self.settings.seeds[0]
        name = self.student_name(k, seed)
        self.say(f"explore{suffix(k + 1)}: serving {name} as the explorer")
        served = serve_models(engine, ServeSettings(models={name: self.train_dir(k, seed).uri()}),
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
        """One fine-tuning per seed (each resumable on its own), round k > 1 from round k-1's weights
        of the same seed."""
        for seed in self.settings.seeds:
            output = self.train_dir(k, seed)
            if done(output):
                continue
            self.say(f"train{suffix(k)}: seed {seed}")
            started = time.perf_counter()
            settings = dataclasses.replace(self.train_settings, merge=True, seed=seed)
            start = (self.train_dir(k - 1, seed) / weights_name(settings)).uri() if k > 1 else None
            result = run_training(self.dir("exploit", k) / "sft", output, settings, start_weights=start)
            (output / "metrics.json").write_text(json.dumps(
                {"history": result.history, "examples": result.examples, "dropped_too_long": result.dropped_too_long,
                 "resumed_at": result.resumed_at, "start_weights": start, "exported_step": result.exported_step},
                indent=1))
            loss_chart(result.history, output / "loss.png", f"{settings.method} fine-tuning of {settings.model}, "
                       f"seed {seed}" + (f", round {k}" if k > 1 else ""))
            update_manifest(output, {"status": "finished", "finished": now(), "seed": seed,
                                     "steps": result.history[-1]["step"], "exported_step": result.exported_step,
                                     "examples": result.examples, "wall_s": round(time.perf_counter() - started, 1)})

    # -----------------------------------------------------------------------------------------
    # Measurement

    def dev_queries(self) -> Location | None:
        """Round 1's development queries (exploit's dev_queries.json), if it holds any."""
        path = self.dir("exploit", 1) / DEV_QUERIES
        return path if path.is_file() and any(json.loads(path.read_text()).values()) else None

    def benchmark(self, endpoint: Endpoint, engine: EngineConfig, split: str, settings: list[str],
                  limit: int = 0) -> list:
        """``endpoint`` (served as ``engine`` says) on the development queries or the benchmark's test
        queries of the explored APIs."""
        queries = self.dev_queries().uri() if split == "dev" else ""
        cfg = dataclasses.replace(self.evaluation, settings=settings, apis=[s.name for s in self.specs],
                                  limit=limit or self.evaluation.limit, demo_pool=self.dirs["exploit"].uri(),
                                  queries=queries)
        return asyncio.run(run_benchmark(endpoint, cfg, engine.max_model_len, tokenizer_dir(engine), "none",
                                         retriever=self.retriever))

    @functools.cached_property
    def retriever(self) -> Retriever:
        """The embedding model every measurement retrieves tools and demonstrations with, loaded once."""
        return Retriever(self.evaluation.embedding_model)

    def evaluate_teacher(self, teacher: Endpoint) -> None:
        self.say(f"teacher: measured on {self.settings.teacher_eval_limit} test queries per API")
        started = time.perf_counter()
        (result,) = self.benchmark(teacher, self.teacher, "test", ["top5"], self.settings.teacher_eval_limit)
        wall_s = time.perf_counter() - started
        atomic_write_text(self.dirs["evaluate"] / TEACHER_FILE, json.dumps(
            {"model": self.teacher.model, "setting": result.setting, **result.scored.metrics,
             "wall_s": round(wall_s, 1), "by_api": errors_by_api(result.scored.marks)}, indent=1))
        self.record(TEACHER_STAGE, wall_s)

    @staticmethod
    def student_name(k: int, seed: int) -> str:
        return f"tuned{suffix(k)}-s{seed}"

    def students(self) -> dict[str, tuple[str, dict[str, list[str]]]]:
        """Served name → (what to serve, evaluation settings per query set): the base student and
        each round's, one per seed."""
        splits = [s for s in SPLITS if s == "dev" and self.dev_queries() or s == "test" and self.settings.test_queries]
        base = {"dev": self.settings.student_settings[:1], "test": self.settings.student_settings}
        students = {"base": (self.train_settings.model, {s: base[s] for s in splits})}
        for k in range(1, self.settings.rounds + 1):
            for seed in self.settings.seeds:
                students[self.student_name(k, seed)] = (self.train_dir(k, seed).uri(),
                                                        {s: self.settings.tuned_settings for s in splits})
        return students

    def measured(self) -> dict[str, dict[str, dict[str, Any]]]:
        """metrics.json: per query set (dev, test), per row ("<student> <setting>"), the metrics."""
        metrics = self.dirs["evaluate"] / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.is_file() else {split: {} for split in SPLITS}

    def unmeasured(self) -> dict[str, tuple[str, dict[str, list[str]]]]:
        """The students of ``students()`` that lack a row in metrics.json."""
        rows = self.measured()
        return {name: (source, settings) for name, (source, settings) in self.students().items()
                if any(f"{name} {setting}" not in rows.get(split, {}) for split, wanted in settings.items()
                       for setting in wanted)
                or (self.settings.test_set and f"{name} test set (react)" not in rows.get("test", {}))}

    def serve_and_evaluate(self) -> None:
        """The students three at a time on one endpoint (as jobs/serve.py serves them; three engines
        and their ingress fit a local Ray instance's 8 CPU slots), each measured; each endpoint is
        removed after. Students already measured (before a crash, or before a round or seed was added) are
        not measured again."""
        from ray import serve

        rows, wanted = self.measured(), list(self.unmeasured().items())
        for group in (wanted[i:i + 3] for i in range(0, len(wanted), 3)):
            served = serve_models(self.student, ServeSettings(models={n: src for n, (src, _) in group}))
            try:
                for name, (_, settings) in group:
                    self.say(f"evaluate: {name}")
                    for split, measured in self.evaluate(Endpoint(served.base_url, name, served.api_key),
                                                         settings).items():
                        rows.setdefault(split, {}).update(measured)
                    atomic_write_text(self.dirs["evaluate"] / "metrics.json", json.dumps(rows, indent=1))
            finally:
                serve.delete(self.student.app_name)
        update_manifest(self.dirs["evaluate"], {"status": "finished", "finished": now()})

    def evaluate(self, endpoint: Endpoint, settings: dict[str, list[str]]) -> dict[str, dict[str, dict[str, Any]]]:
        output = self.dirs["evaluate"]
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        for split, wanted in settings.items():
            student = dataclasses.replace(self.student, model=self.train_settings.model)  # its tokenizer is the base's
            for r in self.benchmark(endpoint, student, split, wanted):
                rows.setdefault(split, {})[f"{endpoint.model} {r.setting}"] = {
                    **r.scored.metrics, "wall_s": round(r.elapsed_s, 1), "by_api": errors_by_api(r.scored.marks)}
                (output / "predictions" / split / f"{endpoint.model}-{r.setting}.json").write_text(
                    json.dumps(r.predictions))
        if self.settings.test_set:
            cases = load_test_set(Path(self.settings.test_set), {s.name: s for s in self.specs})
            results = asyncio.run(self.test_set(endpoint, cases, output / f"test_set-{endpoint.model}"))
            for form, m in results.items():
                rows.setdefault("test", {})[f"{endpoint.model} test set ({form})"] = {
                    "n": m["n"], "wellformed": m["wellformed"], "api_match": m["name_match"], "correct": m["exact"],
                    "wall_s": m["wall_s"]}
        return rows

    async def test_set(self, endpoint: Endpoint, cases: list, output: Location) -> dict[str, Any]:
        async with endpoint.client(max_concurrency=self.evaluation.max_in_flight) as client:
            return await run_test_set(client, cases, ["react", "react+constrained"], self.evaluation.max_tokens, output)

    # -----------------------------------------------------------------------------------------
    # Report

    def summary(self, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """One query set's rows with each round's fine-tuned students averaged over the seeds: per
        "<student> <setting>" (``tuned top5``, ``tuned_2 top5``), each metric's mean, sample standard
        deviation, minimum and maximum, and the seeds' own values."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for name, m in rows.items():
            student, _, setting = name.partition(" ")
            if student.startswith("tuned") and "-s" in student:
                groups.setdefault(f"{student.rsplit('-s', 1)[0]} {setting}", []).append(m)
            else:
                groups[name] = [m]
        return {name: {"n": ms[0]["n"], "seeds": len(ms), **{metric: spread([m[metric] for m in ms])
                                                             for metric in METRICS}}
                for name, ms in groups.items()}

    def report(self) -> dict[str, Any]:
        """report.md, outcome.png and the outcome as a dict (also the console table's rows)."""
        measured = self.measured()
        teacher_file = self.dirs["evaluate"] / TEACHER_FILE
        teacher = json.loads(teacher_file.read_text()) if teacher_file.is_file() else None
        if teacher:
            measured.setdefault("test", {})[f"teacher {teacher['setting']}"] = teacher
        summaries = {split: self.summary(measured.get(split, {})) for split in SPLITS}
        walls = read_manifest(self.output).get("stages", {})
        headers = ["model / setting", "seeds", "n", "wellformed %", "api_match %", "correct %"]
        tables = {split: [[name, m["seeds"], m["n"], *(shown(m[metric]) for metric in METRICS)]
                          for name, m in summaries[split].items()] for split in SPLITS}
        lines = ["# ste-ray pipeline report", ""]
        funnels, training = {}, {}
        for k in range(1, self.settings.rounds + 1):
            funnel = read_manifest(self.dir("exploit", k)).get("funnel")
            if funnel:
                funnels[k] = funnel
        if 1 in funnels:
            total = funnels[1][-1]
            lines += [f"Data: {total['trials']} trials → {total['kept']} kept → {total['examples']} training examples; "
                      f"{total.get('dev', 0)} development queries (held-out episodes, never trained on).", ""]
        lines += ["## Test: the benchmark's held-out queries of the explored APIs", "",
                  "Read only for this report; `correct` by string match for every API. Fine-tuned rows: mean ± "
                  "standard deviation over the seeds (min–max).", "", markdown_table(headers, tables["test"]), "",
                  "## Development: the held-out episodes' requests and their verified calls", "",
                  "What settings are chosen on.", "", markdown_table(headers, tables["dev"]), ""]
        for k in range(1, self.settings.rounds + 1):
            of_round = f", round {k}" if self.settings.rounds > 1 else ""
            if k in funnels:
                funnel_headers, table = funnel_table(funnels[k])
                lines += [f"## Data funnel{of_round}", "", markdown_table(funnel_headers, table), ""]
            for seed in self.settings.seeds:
                train = self.train_dir(k, seed)
                if not (train / "metrics.json").is_file():
                    continue
                metrics = json.loads((train / "metrics.json").read_text())
                history = metrics["history"]
                validation = [h["validation_loss"] for h in history if h.get("validation_loss") is not None]
                training[f"{k}/{seed}"] = {"steps": history[-1]["step"], "exported_step": metrics.get("exported_step"),
                                           "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"],
                                           "validation_loss": validation, "wall_s": read_manifest(train).get("wall_s")}
                lines += [f"## Training{of_round}, seed {seed}", "",
                          f"{history[-1]['step']} steps; loss {history[0]['loss']:.3f} → {history[-1]['loss']:.3f}"
                          + (f"; validation loss per epoch {', '.join(f'{v:.3f}' for v in validation)}; the weights "
                             f"of step {metrics.get('exported_step')} (lowest validation loss) were kept"
                             if validation else ""), "",
                          f"![loss]({self.dir('train', k).name}/{train.name}/loss.png)", ""]
        for split in SPLITS:
            errors = self.errors_table(measured.get(split, {}))
            if errors:
                lines += [f"## Errors by API, {'development' if split == 'dev' else 'test'} queries", "",
                          f"The last round's fine-tuned students ({self.settings.tuned_settings[0]}), counts summed "
                          "over the seeds.", "", errors, ""]
        lines += ["## Wall time per stage", "",
                  markdown_table(["stage", "wall s", "skipped"], [[k, v["wall_s"], v["skipped"]] for k, v in walls.items()]),
                  "", "![outcome](outcome.png)", ""]
        (self.output / "report.md").write_text("\n".join(lines))
        chart = [(name, {metric: m[metric]["mean"] for metric in METRICS}) for name, m in summaries["test"].items()]
        if chart:
            bar_chart(chart, self.output / "outcome.png", "STE benchmark, held-out test queries (mean over seeds)")
        return {"metrics": measured, "summary": summaries, "teacher": teacher, "funnel": funnels.get(1, []),
                "later_funnels": {f"round_{k}": f for k, f in funnels.items() if k > 1}, "training": training,
                "walls": walls, "rows": tables}


    def errors_table(self, rows: dict[str, dict[str, Any]]) -> str:
        """Markdown: per API, the last round's fine-tuned students' answers (their first tuned setting)
        summed over the seeds: right API, correct, not wellformed, and the APIs called instead."""
        k, setting = self.settings.rounds, self.settings.tuned_settings[0]
        measured = [rows[name]["by_api"] for seed in self.settings.seeds
                    if "by_api" in rows.get(name := f"{self.student_name(k, seed)} {setting}", {})]
        if not measured:
            return ""
        totals: dict[str, dict[str, Any]] = {}
        for by_api in measured:
            for api, m in by_api.items():
                total = totals.setdefault(api, {"n": 0, "right_api": 0, "correct": 0, "not_wellformed": 0,
                                                "instead": {}})
                for key in ("n", "right_api", "correct", "not_wellformed"):
                    total[key] += m[key]
                for other, count in m["instead"].items():
                    total["instead"][other] = total["instead"].get(other, 0) + count
        table = [[api, t["n"], t["right_api"], t["correct"], t["not_wellformed"],
                  ", ".join(f"{other} ×{count}" for other, count in
                            sorted(t["instead"].items(), key=lambda item: -item[1])[:3])]
                 for api, t in sorted(totals.items())]
        return markdown_table(["API", "answers", "right API", "correct", "not wellformed", "called instead (top 3)"],
                              table)


METRICS = ("wellformed", "api_match", "correct")


def tokenizer_dir(engine: EngineConfig) -> str | None:
    """The local model directory whose tokenizer fits prompts to an engine's context: a started
    engine's; for an endpoint used as it is, prompts are measured in characters."""
    if engine.mode != "start":
        return None
    local = resolve_model(engine.model, engine.cache_dir or None)
    return local if Path(local).is_dir() else None


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), minimum, maximum, and the values."""
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": round(mean, 2), "sd": round(sd, 2), "min": min(values), "max": max(values), "values": values}


def shown(value: dict[str, Any]) -> str:
    """A metric as the report shows it: the value alone for one seed, else mean ± sd (min–max)."""
    if len(value["values"]) == 1:
        return f"{value['mean']:.1f}"
    return f"{value['mean']:.1f} ± {value['sd']:.1f} ({value['min']:.1f}–{value['max']:.1f})"


async def _probe(endpoint: Endpoint) -> bool:
    async with endpoint.client(max_retries=2) as client:
        return await supports_structured_outputs(client)
