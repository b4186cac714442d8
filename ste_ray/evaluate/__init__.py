"""Evaluation on the STE benchmark with the paper's metrics.

  scoring  the paper's scorer (wellformed, api_match, correct), judges, per-batch metrics
  runner   settings, retrieval of tools and demonstrations, prompt fitting, running a model
  chart    the bar chart of a run
"""

from ste_ray.evaluate.runner import (METRICS_HEADERS, EvalSettings, Setting, SettingResult, load_benchmark,
                                     load_demo_pool, metrics_table_rows, run_benchmark, select_queries)
from ste_ray.evaluate.scoring import JUDGES, llm_judge, metrics, per_batch_rows, score

__all__ = ["JUDGES", "METRICS_HEADERS", "EvalSettings", "Setting", "SettingResult", "llm_judge", "load_benchmark", "load_demo_pool",
           "metrics", "metrics_table_rows", "per_batch_rows", "run_benchmark", "score", "select_queries"]
