"""Exploration, the main job: STE episodes for every selected API, run concurrently by Ray actors
against the explorer endpoint, written to Parquet as they finish.

    python jobs/explore.py                                   # embedded engine, the STE offline APIs
    python jobs/explore.py --apis add_date,get_today_date --explore.num_episodes 15 --explore.num_stm_slots 4 --explore.max_turn 4
    python jobs/explore.py --explorer-url https://host/v1 --model NAME     # any OpenAI-compatible endpoint
    python jobs/explore.py --output runs/x --resume                        # continue a killed run
"""

import asyncio
import dataclasses
import logging
import time
import uuid
from pathlib import Path

from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.engine import EngineConfig, RayConfig, explorer_endpoint, init_ray
from ste_ray.explore import (SUMMARY_HEADERS, ExploreSettings, check_output, package_versions, run_exploration,
                             select_tools, tool_specs_hash, write_manifest)
from ste_ray.report import format_table
from ste_ray.tools.calls import ToolCallConfig


@dataclasses.dataclass
class ExploreConfig:
    """Explore tools by Simulated Trial and Error and write the trials to Parquet."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig, help="The explorer endpoint")
    explore: ExploreSettings = option(default_factory=ExploreSettings, help="Episodes")
    tool_calls: ToolCallConfig = option(default_factory=ToolCallConfig, help="Tool-call limits and record/replay")
    tools: list[str] = option(
        default_factory=lambda: ["ste"],
        help="Tool sources: ste (the STE benchmark APIs with offline executors), builtin, builtin:<category>, "
        "or an OpenAI-tools JSON/YAML file")
    apis: list[str] = option(default_factory=list, help="Explore only these APIs (names, comma-separated)")
    output: str = option("outputs/explore", help="Output directory (trials/, episodes/, manifest.json)")
    resume: bool = option(False, help="Continue the run in --output: finished episodes are kept, not redone")
    explorer_url: str = option("", help="Shorthand for --engine.mode external --engine.url URL")
    model: str = option("", help="Shorthand for --engine.model (the model the endpoint serves, with --explorer-url)")
    no_exec: bool = option(False, help="Shorthand for --explore.no_exec")
    no_stm: bool = option(False, help="Shorthand for --explore.no_stm")
    no_ltm: bool = option(False, help="Shorthand for --explore.no_ltm")
    no_reflection: bool = option(False, help="Shorthand for --explore.no_reflection")
    visualize: bool = option(False, help="Shorthand for --explore.visualize")

    def validate(self) -> None:
        if self.explorer_url:
            self.engine.mode, self.engine.url = "external", self.explorer_url
        if self.model:
            self.engine.model = self.model
        for flag in ("no_exec", "no_stm", "no_ltm", "no_reflection", "visualize"):
            if getattr(self, flag):
                setattr(self.explore, flag, True)
        if not self.tools:
            fail("tools", "needs at least one source")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = job_config(ExploreConfig)
    # Everything that can be checked is checked before Ray or the engine start.
    try:
        specs = select_tools(cfg.tools, cfg.apis)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    output = Path(cfg.output).resolve()
    try:
        check_output(output, cfg.resume)
    except FileExistsError as e:
        raise SystemExit(f"error: {e}") from None
    output.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]

    started_ray = init_ray(cfg.ray)
    with explorer_endpoint(cfg.engine, cfg.ray) as endpoint:
        write_manifest(output, {
            "status": "running", "run_id": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": to_dict(cfg), "model": endpoint.model, "endpoint": endpoint.base_url,
            "apis": [s.name for s in specs], "tool_specs_sha256": tool_specs_hash(specs),
            "packages": package_versions(),
        })
        print(f"exploring {len(specs)} APIs × {cfg.explore.num_episodes} episodes with {endpoint.model} "
              f"at {endpoint.base_url}", flush=True)
        result = asyncio.run(run_exploration(endpoint, specs, cfg.explore, cfg.tool_calls, output, run_id))
    write_manifest(output, {"status": "finished", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "episodes_done": result.episodes_done, "episodes_before": result.episodes_before,
                            "failures": result.failures})
    if started_ray:
        import ray

        ray.shutdown()

    print()
    print(format_table(SUMMARY_HEADERS, result.per_api))
    print(f"\n{result.episodes_done} episodes in {result.elapsed_s:.0f}s "
          f"({result.completion_tokens / max(result.elapsed_s, 1e-9):.0f} output tok/s)"
          + (f", {result.episodes_before} from an earlier run" if result.episodes_before else "")
          + f"; failed for good: {len(result.failures)}")
    for failure in result.failures:
        print(f"  failed {failure['api']} {failure['episode_id']}: {failure['reason']}")
    print(f"wrote {output}/trials/ (one row per trial), {output}/episodes/ (conversations), {output}/manifest.json")


if __name__ == "__main__":
    main()
