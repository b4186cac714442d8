"""scripts/gold_ceiling.py: every benchmark query of the ten offline APIs is held out in exactly one
fold and trained on in the others, formatted as exploitation formats explored trials (the right API
among its distractors, the gold call as the target); collect pools the folds' figures by query and
scores other models' predictions (the pipeline's students) on the same folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ste_ray.benchmark import Benchmark
from ste_ray.schema import SFTExample, read_records
from ste_ray.tools.builtin import ste_offline_apis
from ste_ray.tools.sources import ste_api_descriptions_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gold_ceiling.py"


def test_every_query_is_held_out_once_and_trained_on_in_the_other_folds(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "prepare", "--output", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    benchmark = Benchmark.load()
    apis = [s.name for s in ste_offline_apis(ste_api_descriptions_path())]
    everything = sorted((api, item["query"]) for api in apis for item in benchmark.tests[api])
    held_out_everywhere = []
    for fold in range(3):
        directory = tmp_path / f"fold_{fold}"
        held_out = json.loads((directory / "queries.json").read_text())
        held = {(api, item["query"]) for api, items in held_out.items() for item in items}
        held_out_everywhere += held
        train = read_records(directory / "sft" / "train", SFTExample)
        assert len(train) + len(held) == len(everything)
        assert not held & {(e.api, e.query) for e in train}
        for example in train:
            gold = next(i for i in benchmark.tests[example.api] if i["query"] == example.query)
            messages = json.loads(example.messages)
            assert messages[-1]["content"] == f"Action: {example.api}\nAction Input: " + json.dumps(
                json.loads(gold["action_input"]), ensure_ascii=False)
            assert messages[1]["content"].count("API_name: ") == 5 and f"API_name: {example.api}\n" in messages[1]["content"]
    assert sorted(held_out_everywhere) == everything


def test_collect_pools_the_folds_by_query_and_scores_other_students_on_the_same_folds(tmp_path):
    rows = [{"n": 50, "wellformed": 100.0, "api_match": 60.0, "correct": 40.0},
            {"n": 50, "wellformed": 90.0, "api_match": 50.0, "correct": 30.0},
            {"n": 40, "wellformed": 50.0, "api_match": 100.0, "correct": 20.0}]
    truth = {"add_date": [{"query": f"q{i}", "action": "add_date", "action_input": '{"days": "%d"}' % i} for i in range(3)]}
    for fold, row in enumerate(rows):
        (tmp_path / f"fold_{fold}" / "evaluate").mkdir(parents=True)
        (tmp_path / f"fold_{fold}" / "evaluate" / "metrics.json").write_text(json.dumps({"settings": {"top5": row}}))
        (tmp_path / f"fold_{fold}" / "queries.json").write_text(json.dumps({"add_date": [truth["add_date"][fold]]}))
    (tmp_path / "fold_3").mkdir()  # prepared, not trained yet
    (tmp_path / "fold_3.log").write_text("")  # not a fold
    # A student right on q0, calling the right API with a wrong value on q1, not calling on q2.
    answers = ['Action: add_date\nAction Input: {"days": "0"}', 'Action: add_date\nAction Input: {"days": "9"}',
               "Final Answer: no"]
    student = tmp_path / "student-top5.json"
    student.write_text(json.dumps({"add_date": [{**item, "model_output": answer} for item, answer in
                                                zip(reversed(truth["add_date"]), reversed(answers))]}))
    results = tmp_path / "ceiling.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "collect", "--output", str(tmp_path), "--results", str(results),
                             "--students", str(student)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(results.read_text())
    # correct: (20 + 15 + 8) of 140 queries; api_match: (30 + 22.5 + 20) of the 115 wellformed answers
    assert report["not_evaluated"] == ["fold_3"]
    assert report["pooled_over_folds"] == {"n": 140, "wellformed": 82.14, "correct": 30.71, "api_match": 63.04}
    scored = report["students_on_the_same_folds"]["student-top5"]
    assert [scored["folds"][f"fold_{k}"]["correct"] for k in range(3)] == [100.0, 0.0, 0.0]
    assert [scored["folds"][f"fold_{k}"]["wellformed"] for k in range(3)] == [100.0, 100.0, 0.0]
    assert scored["pooled_over_folds"] == {"n": 3, "wellformed": 66.67, "correct": 33.33, "api_match": 100.0}
