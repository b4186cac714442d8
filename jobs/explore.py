"""Exploration, the main job: STE episodes for every selected API, run concurrently by Ray actors
against the explorer endpoint, written to Parquet as they finish.

    python jobs/explore.py                                   # embedded engine, the STE offline APIs
    python jobs/explore.py --apis add_date,get_today_date --explore.num_episodes 15 --explore.num_stm_slots 4 --explore.max_turn 4
    python jobs/explore.py --explorer-url https://host/v1 --model NAME     # any OpenAI-compatible endpoint
    python jobs/explore.py --output runs/x --resume                        # continue a killed run
"""

import asyncio
import dataclasses
import json
import uuid
from typing import ClassVar

from ste_ray.client import LLMError
from ste_ray.config import Alias, fail, job_config, option, to_dict
from ste_ray.engine import EngineConfig, EngineUnplaceable, endpoint_aliases, model_endpoint
from ste_ray.explore import (SUMMARY_HEADERS, ExploreSettings, check_output, failing_calls_warning, run_exploration,
                             summary_rows)
from ste_ray.model import ModelNotFoundError
from ste_ray.report import format_table
from ste_ray.runs import OutputError, log_file, now, package_versions, prepare_location, tool_specs_hash, update_manifest
from ste_ray.runtime import RayConfig, job_console, ray_cluster, run_job
from ste_ray.tools.calls import ToolCallConfig
from ste_ray.tools.sources import ToolSource, select_tools
from ste_ray.tools.spec import ToolSpecError


@dataclasses.dataclass
class ExploreConfig:
    """Explore tools by Simulated Trial and Error and write the trials to Parquet."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig, help="The explorer endpoint")
    explore: ExploreSettings = option(default_factory=ExploreSettings, help="Episodes")
    tool_calls: ToolCallConfig = option(default_factory=ToolCallConfig, help="Tool-call limits and record/replay")
    tools: list[ToolSource] = option(
        default_factory=lambda: [ToolSource("ste")],
        help="Tool sources (see ste_ray/tools/sources.py): ste, ste:FILE, builtin[:category], openai:FILE, "
        "openapi:URL|FILE, mcp:URL|COMMAND, python:MODULE[:NAME]; in YAML each may carry secret_env, base_url, limits")
    apis: list[str] = option(default_factory=list, help="Explore only these APIs (names, comma-separated)")
    output: str = option("outputs/explore", help="Output directory (trials/, episodes/, manifest.json, logs/): a local "
                         "path or a filesystem URI (s3://bucket/prefix, gs://...; logs then go to ./logs/)")
    resume: bool = option(False, help="Continue the run in --output: finished episodes are kept, not redone")
    verbose: bool = option(False, help="Show Ray's and vLLM's logs live instead of writing them to the log file")

    aliases: ClassVar = (
        *endpoint_aliases("explorer_url"),
        *(Alias(flag, f"Shorthand for --explore.{flag}", {f"explore.{flag}": "true"}, boolean=True)
          for flag in ("no_exec", "no_stm", "no_ltm", "no_reflection", "visualize")),
    )

    def validate(self) -> None:
        if not self.tools:
            fail("tools", "needs at least one source")


def main() -> None:
    cfg = job_config(ExploreConfig)
    # Everything that can be checked is checked before Ray or the engine start.
    specs, source_limits = select_tools(cfg.tools, cfg.apis)
    # A tool's own per_tool limits win over its source's.
    tool_calls = dataclasses.replace(cfg.tool_calls, per_tool={**source_limits, **cfg.tool_calls.per_tool})
    output = prepare_location(cfg.output)
    check_output(output, cfg.resume)
    run_id = uuid.uuid4().hex[:12]
    with job_console(log_file(output, "explore"), cfg.verbose) as console:
        with ray_cluster(cfg.ray), model_endpoint(cfg.engine) as endpoint:
            (output / "tools.json").write_text(json.dumps([s.record() for s in specs], indent=1, ensure_ascii=False))
            update_manifest(output, {
                "status": "running", "run_id": run_id, "started": now(), "config": to_dict(cfg),
                "model": endpoint.model, "endpoint": endpoint.base_url, "apis": [s.name for s in specs],
                "tool_specs_sha256": tool_specs_hash(s.openai() for s in specs), "packages": package_versions(),
            })
            console.print(f"exploring {len(specs)} APIs × {cfg.explore.num_episodes} episodes with {endpoint.model} "
                          f"at {endpoint.base_url}")
            result = asyncio.run(run_exploration(endpoint, specs, cfg.explore, tool_calls, output, run_id))
        update_manifest(output, {"status": "finished", "finished": now(), "episodes_done": result.episodes_done,
                                 "episodes_before": result.episodes_before, "episodes_rerun": result.episodes_rerun,
                                 "failures": result.failures, "summary": result.summary})
        console.print()
        console.print(format_table(SUMMARY_HEADERS, summary_rows(result.summary)))
        console.print(f"\n{result.episodes_done} episodes in {result.elapsed_s:.0f}s "
                      f"({result.completion_tokens / max(result.elapsed_s, 1e-9):.0f} output tok/s)"
                      + (f", {result.episodes_before} from an earlier run" if result.episodes_before else "")
                      + (f", {result.episodes_rerun} run again after their actor was lost" if result.episodes_rerun else "")
                      + f"; failed for good: {len(result.failures)}")
        for failure in result.failures:
            console.print(f"  failed {failure['api']} {failure['episode_id']}: {failure['reason']}")
        if warning := failing_calls_warning(result.summary, cfg.engine.model):
            console.print(warning)
        console.print(f"wrote {output}/trials/ (one row per trial), {output}/episodes/ (conversations), "
                      f"{output}/tools.json, {output}/manifest.json")


if __name__ == "__main__":
    run_job(main, expected=(ToolSpecError, OutputError, LLMError, EngineUnplaceable, ModelNotFoundError))
