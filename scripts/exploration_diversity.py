"""How varied an exploration's trials are, per API: how many distinct calls the queries were written
from (grounded imagination's grounding calls), how many trials had none (the model's sampled call did
not run), and how many distinct calls the trials ended on. The student learns an API's argument
values from these calls, so an exploration that grounds most trials on one documentation example
teaches it to copy that example.

    python scripts/exploration_diversity.py results/pipeline_exploration outputs/lever_diverse4/explore \\
        --episodes 4 --results results/lever_grounding_candidates.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from ste_ray.schema import Trial, read_dir
from ste_ray.verify import last_successful_call


def last_call(steps: list[dict]) -> str | None:
    """The trial's last call that ran without a tool or parse error (its arguments, canonical JSON)."""
    step = last_successful_call(steps)
    if step is None:
        return None
    try:
        return step["action"] + " " + json.dumps(json.loads(step["action_input"] or "{}"), sort_keys=True)
    except json.JSONDecodeError:
        return step["action"] + " " + (step["action_input"] or "")


def diversity(exploration: str, episodes: int = 0) -> dict:
    """Per API and in all; with ``episodes``, only each API's first that many episodes (to compare
    explorations of different lengths)."""
    rows = read_dir(Path(exploration) / "trials", Trial,
                    columns=["api", "episode_index", "query", "steps", "grounding_call"]).to_pylist()
    by_api: dict[str, list[dict]] = defaultdict(list)
    for trial in rows:
        if not episodes or trial["episode_index"] < episodes:
            by_api[trial["api"]].append(trial)
    if not by_api:
        raise SystemExit(f"error: {exploration} holds no trials" + (f" in its first {episodes} episodes" if episodes else ""))
    per_api = {}
    for api, trials in sorted(by_api.items()):
        grounded = [t["grounding_call"] for t in trials if t["grounding_call"]]
        calls = [c for c in (last_call(t["steps"]) for t in trials) if c]
        per_api[api] = {
            "trials": len(trials),
            "ungrounded": len(trials) - len(grounded),
            "distinct_grounding_calls": len(set(grounded)),
            "distinct_last_calls": len(set(calls)),
            "distinct_queries": len({t["query"] for t in trials}),
        }
    total = {key: sum(row[key] for row in per_api.values()) for key in next(iter(per_api.values()))}
    return {"exploration": exploration, "episodes_per_api": episodes or None, "total": total, "per_api": per_api}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("explorations", nargs="+", help="explore output directories (each with trials/)")
    parser.add_argument("--episodes", type=int, default=0, help="only each API's first N episodes (0: all)")
    parser.add_argument("--results", default="", help="write the figures here as JSON")
    args = parser.parse_args()
    runs = [diversity(e, args.episodes) for e in args.explorations]
    keys = list(runs[0]["total"])
    print("| exploration | API | " + " | ".join(keys) + " |")
    print("| --- | --- |" + " ---: |" * len(keys))
    for run in runs:
        for api, row in [*run["per_api"].items(), ("all", run["total"])]:
            print(f"| {run['exploration']} | {api} | " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.results:
        Path(args.results).write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
