"""scripts/exploration_diversity.py counts, per API, the distinct calls an exploration's requests were
written from, the trials written without one, and the distinct calls the trials ended on."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from ste_ray.schema import Step

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from exploration_diversity import diversity, last_call  # noqa: E402


def step(action_input: str, tool_error_kind: str | None = None, parse_error: str | None = None) -> dict:
    return dataclasses.asdict(Step(thought=None, action="Places", action_input=action_input, observation="...",
                                   parse_error=parse_error, tool_error_kind=tool_error_kind, latency_s=0.0))


def test_the_last_call_is_the_last_that_ran_cleanly_in_canonical_form():
    steps = [step('{"b": 1, "a": 2}'), step('{"a": 3}', tool_error_kind="http_400"), step("{", parse_error="bad")]
    assert last_call(steps) == 'Places {"a": 2, "b": 1}'
    assert last_call([step('{"a": 3}', tool_error_kind="http_400")]) is None


def test_the_shipped_exploration_counts_and_its_first_episodes_are_a_subset():
    shipped = str(ROOT / "results" / "pipeline_exploration")
    whole, first = diversity(shipped), diversity(shipped, episodes=4)
    assert whole["total"]["trials"] == 160 and first["total"]["trials"] == 80
    # Argument-free APIs can only ever make one call.
    assert whole["per_api"]["get_today_date"]["distinct_grounding_calls"] == 1
    for api, row in first["per_api"].items():
        assert row["ungrounded"] + row["distinct_grounding_calls"] <= row["trials"]
        for key in row:
            assert row[key] <= whole["per_api"][api][key]
    assert whole["total"]["ungrounded"] == sum(r["ungrounded"] for r in whole["per_api"].values()) > 0


def test_the_cli_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "d.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "exploration_diversity.py"),
                             str(ROOT / "results" / "pipeline_exploration"), "--episodes", "4", "--results", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| all | 80 |" in result.stdout  # the total row: 10 APIs × 4 episodes × 2 trials
    (run,) = json.loads(out.read_text())
    assert run["episodes_per_api"] == 4 and run["total"]["trials"] == 80
