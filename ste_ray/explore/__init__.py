"""Exploration: Simulated Trial and Error episodes, run concurrently by Ray actors.

  settings   how episodes run (``ExploreSettings``)
  episode    one episode: imagination, trial, reflection, in one conversation
  actor      the async Ray actor that runs many episodes at once
  scheduler  which episode runs next, on which actor (long-term memory, in-flight caps)
  run        the driver: resume, Parquet output, progress, the closing table
"""

from ste_ray.explore.run import (SUMMARY_HEADERS, ExplorationResult, check_output, failing_calls_warning,
                                 run_exploration, summary_rows)
from ste_ray.explore.settings import ExploreSettings

__all__ = ["SUMMARY_HEADERS", "ExplorationResult", "ExploreSettings", "check_output", "failing_calls_warning",
           "run_exploration", "summary_rows"]
