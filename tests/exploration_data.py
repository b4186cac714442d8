"""An exploration output written the way jobs/explore.py writes it (trials/, episodes/, tools.json),
with trials whose calls are really executed by the built-in tools: the input of the exploit tests."""

from __future__ import annotations

import json
from pathlib import Path

from ste_ray.explore.episode import episode_id
from ste_ray.schema import Episode, Step, Trial, write_records
from ste_ray.storage import Location
from ste_ray.tools.builtin import ste_offline_apis
from ste_ray.tools.sources import ste_api_descriptions_path

# (api, query, arguments, final answer template using the result) — the answers are faithful.
CALLS = [
    ("add_date", "What date is 30 days after 2023-05-01?", {"date": "2023-05-01", "days": 30},
     lambda r: f"30 days after 2023-05-01 it is {r['date']}."),
    ("add_date", "I have a deadline 45 days from 2024-02-10, which day is that?", {"date": "2024-02-10", "days": 45},
     lambda r: f"The deadline falls on {r['date']}."),
    ("add_date", "Which date was it 100 days before 2022-12-25?", {"date": "2022-12-25", "days": -100},
     lambda r: f"100 days before Christmas 2022 was {r['date']}."),
    ("Numbers Translator%%Numbers Translator", "How do you write the number 4821 in English words?", {"text": "4821"},
     lambda r: f"4821 is written {r['text']}."),
    ("Numbers Translator%%Numbers Translator", "Spell out 7000315 in words for a cheque, please.", {"text": "7000315"},
     lambda r: f"In words: {r['text']}."),
    ("Stadia Maps Time Zone API%%TZ Lookup by Location", "Which time zone is the point at latitude 35.68, longitude 139.69 in?",
     {"lat": 35.68, "lng": 139.69}, lambda r: f"That point is in the {r['tz_id']} time zone."),
]


def write_exploration(directory: Path | Location, trials: list[Trial], specs) -> None:
    by_episode: dict[str, list[Trial]] = {}
    for t in trials:
        by_episode.setdefault(t.episode_id, []).append(t)
    for eid, group in by_episode.items():
        write_records(directory / "trials" / f"{eid}.parquet", group, Trial)
        write_records(directory / "episodes" / f"{eid}.parquet", [Episode(
            run_id="test", api=group[0].api, episode_id=eid, episode_index=group[0].episode_index, conversation="[]",
            num_trials=len(group), stop_reason="completed", memory_size=0, prompt_tokens=0, completion_tokens=0,
            latency_s=0.0, model_latency_s=0.0, completion_tokens_per_request=[])], Episode)
    (directory / "tools.json").write_text(json.dumps([s.record() for s in specs], ensure_ascii=False))


def trial(api: str, index: int, query: str, steps: list[Step], final_answer: str | None, executed: bool = True) -> Trial:
    return Trial(run_id="test", api=api, episode_id=episode_id(api, index), episode_index=index, slot=0, query=query,
                 steps=steps, final_answer=final_answer, reflection="Yes", success=True,
                 num_calls=sum(1 for s in steps if s.action and not s.parse_error), num_parse_errors=sum(
                     1 for s in steps if s.parse_error), num_tool_errors=sum(1 for s in steps if s.tool_error_kind),
                 executed=executed, constrained=True, grounding_call=None, grounding_observation=None,
                 matches_grounding=None, prompt_tokens=0, completion_tokens=0, latency_s=0.0)


def faithful_trials() -> tuple[list[Trial], list]:
    """One executed, faithful trial per entry of CALLS, each its own episode."""
    specs = {s.name: s for s in ste_offline_apis(ste_api_descriptions_path())}
    trials = []
    for i, (api, query, arguments, answer) in enumerate(CALLS):
        result = specs[api].executor.function(**arguments)
        step = Step(thought="call it", action=api, action_input=json.dumps(arguments), observation=json.dumps(result),
                    parse_error=None, tool_error_kind=None, latency_s=0.01)
        trials.append(trial(api, i, query, [step], answer(result)))
    return trials, list(specs.values())
