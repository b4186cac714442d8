"""The student's ceiling on gold data of the explored APIs: the benchmark's own queries of the ten
offline APIs, with their ground-truth calls, split into folds; for each fold the student is trained
on the other folds' queries (formatted exactly as exploitation formats explored trials) and measured
on the fold's. The test queries are trained on here, so this is an analysis of what the student can
learn from human-written requests, never a way to choose a default.

    python scripts/gold_ceiling.py prepare --output outputs/gold          # folds' SFT data and queries
    python jobs/train.py --input outputs/gold/fold_0/sft --output outputs/gold/fold_0/train --train.method full
    python jobs/evaluate.py --engine.model outputs/gold/fold_0/train/model --engine.max_model_len 4096 \\
        --eval.queries outputs/gold/fold_0/queries.json --eval.settings top5 --judge none --output outputs/gold/fold_0/evaluate
    ...                                                                    # the same for every fold
    python scripts/gold_ceiling.py collect --output outputs/gold --results results/ceiling_gold.json \\
        --students outputs/pipeline/evaluate/predictions/test/tuned-s0-top5.json   # the STE student, same folds
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from ste_ray.benchmark import Benchmark
from ste_ray.embeddings import Retriever
from ste_ray.evaluate.scoring import score
from ste_ray.exploit.sft import FormatExamples
from ste_ray.react import ste_block
from ste_ray.schema import SFTExample, write_records
from ste_ray.tools.builtin import ste_offline_apis
from ste_ray.tools.sources import ste_api_descriptions_path


def prepare(output: Path, folds: int, distractors: int) -> None:
    benchmark = Benchmark.load()
    apis = [s.name for s in ste_offline_apis(ste_api_descriptions_path())]
    tools = dict(benchmark.descriptions)
    retriever = Retriever()
    names = list(tools)
    keys = retriever.embed([ste_block(n, tools[n]) for n in names])
    formatter = FormatExamples(tools, None, toolkens=False, add_tool_response=False, seed=0)
    items = [(api, i, item) for api in apis for i, item in enumerate(benchmark.tests[api])]
    vectors = retriever.embed([item["query"] for _, _, item in items])
    shown = Retriever.nearest_names(vectors, keys, names, distractors + 1, keep=[api for api, _, _ in items])
    for fold in range(folds):
        directory = output / f"fold_{fold}"
        train, held_out = [], {}
        for (api, i, item), nearest in zip(items, shown):
            if i % folds == fold:
                held_out.setdefault(api, []).append({k: item[k] for k in ("query", "action", "action_input")})
                continue
            row = {"example_id": f"{api}-{i}", "api": api, "seed_key": f"{api}-{i}", "query": item["query"],
                   "paraphrase": False, "action_input": item["action_input"], "observation": "", "final_answer": "",
                   "split": "train"}
            train.append(SFTExample(**formatter.example(row, [n for n in nearest if n != api])))
        write_records(directory / "sft" / "train" / "part-0.parquet", train, SFTExample)
        write_records(directory / "sft" / "validation" / "part-0.parquet", [], SFTExample)
        (directory / "queries.json").write_text(json.dumps(held_out, indent=1, ensure_ascii=False))
        print(f"{directory}: {len(train)} training examples, {sum(map(len, held_out.values()))} held-out queries")


def collect(output: Path, results: Path, students: list[Path]) -> None:
    """The folds' figures pooled by query; with ``students`` (evaluation prediction files of the same
    benchmark queries, e.g. the pipeline's students), their figures on each fold's queries beside them.
    Folds not evaluated yet are left out and named."""
    prepared = sorted(p for p in output.glob("fold_*") if p.is_dir())
    folds = [f for f in prepared if (f / "evaluate" / "metrics.json").is_file()]
    if not folds:
        raise SystemExit(f"error: no fold under {output} is evaluated yet (fold_*/evaluate/metrics.json)")
    rows = {f.name: json.loads((f / "evaluate" / "metrics.json").read_text())["settings"]["top5"] for f in folds}
    report = {"folds": rows, "not_evaluated": [f.name for f in prepared if f not in folds], "pooled_over_folds": pooled(rows)}
    for path in students:
        predictions = json.loads(path.read_text())
        per_fold = {}
        for fold in folds:
            held_out = {(api, item["query"]) for api, items in json.loads((fold / "queries.json").read_text()).items()
                        for item in items}
            on_fold = {api: [i for i in items if (api, i["query"]) in held_out] for api, items in predictions.items()}
            per_fold[fold.name] = asyncio.run(score(on_fold, set(), "none")).metrics
        report.setdefault("students_on_the_same_folds", {})[path.stem] = {"folds": per_fold,
                                                                          "pooled_over_folds": pooled(per_fold)}
    results.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["pooled_over_folds"]))


def pooled(rows: dict[str, dict]) -> dict[str, float]:
    n = sum(r["n"] for r in rows.values())
    result = {metric: round(sum(r[metric] * r["n"] for r in rows.values()) / n, 2) for metric in ("wellformed", "correct")}
    wellformed = sum(r["wellformed"] * r["n"] for r in rows.values())  # api_match is a share of the wellformed
    result["api_match"] = round(sum(r["api_match"] * r["wellformed"] * r["n"] for r in rows.values()) / wellformed, 2)
    return {"n": n, **result}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["prepare", "collect"])
    parser.add_argument("--output", type=Path, default=Path("outputs/gold"))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--distractors", type=int, default=4)
    parser.add_argument("--results", type=Path, default=Path("results/ceiling_gold.json"))
    parser.add_argument("--students", type=Path, nargs="*", default=[],
                        help="collect: prediction files of other models on the same queries, scored per fold")
    args = parser.parse_args()
    if args.action == "prepare":
        prepare(args.output, args.folds, args.distractors)
    else:
        collect(args.output, args.results, args.students)
