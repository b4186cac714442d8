"""Parquet record schemas shared by the stages. A stage reads the previous stage's output directory
with these schemas, so each stage can be rerun alone.

explore writes, under its output directory:
  trials/<episode>.parquet    one row per trial (an STM slot: query, steps, answer, reflection)
  episodes/<episode>.parquet  one row per episode (the whole conversation)
  manifest.json               config, model, tool-spec hash, package versions, counts
  failures.jsonl              episodes that failed for good, with the reason (rerun by --resume)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

STEP = pa.struct([
    ("thought", pa.string()),
    ("action", pa.string()),
    ("action_input", pa.string()),  # the model's raw Action Input text
    ("observation", pa.string()),  # what the explorer was shown (a result, or a corrective message)
    ("parse_error", pa.string()),  # why the turn did not parse, else null
    ("tool_error_kind", pa.string()),  # the tool call's failure kind, else null
    ("latency_s", pa.float64()),
])

TRIAL = pa.schema([
    ("run_id", pa.string()),
    ("api", pa.string()),
    ("episode_id", pa.string()),
    ("episode_index", pa.int32()),
    ("slot", pa.int32()),
    ("query", pa.string()),
    ("steps", pa.list_(STEP)),
    ("final_answer", pa.string()),  # null when the trial ended without one
    ("reflection", pa.string()),  # the explorer's raw answer; null with --no-reflection
    ("success", pa.bool_()),  # the explorer's own Yes/No; null when not asked or unclear
    ("num_calls", pa.int32()),
    ("num_parse_errors", pa.int32()),
    ("num_tool_errors", pa.int32()),
    ("executed", pa.bool_()),  # false under --no-exec
    ("constrained", pa.bool_()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
])

EPISODE = pa.schema([
    ("run_id", pa.string()),
    ("api", pa.string()),
    ("episode_id", pa.string()),
    ("episode_index", pa.int32()),
    ("conversation", pa.string()),  # JSON list of chat messages, as sent to and received from the model
    ("num_trials", pa.int32()),
    ("stop_reason", pa.string()),  # completed | context_full
    ("memory_size", pa.int32()),  # long-term memory entries the episode started with
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    # Of latency_s, the time the episode's model requests took; the rest is tool calls, parsing
    # and waiting for the actor's event loop.
    ("model_latency_s", pa.float64()),
    ("completion_tokens_per_request", pa.list_(pa.int32())),  # each model reply's length, in order
])


def write_rows(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Write rows as one Parquet file, atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, path)


def read_dir(directory: Path, schema: pa.Schema) -> pa.Table:
    """All Parquet files of a directory as one table (empty if there are none)."""
    files = sorted(p for p in Path(directory).glob("*.parquet"))
    if not files:
        return schema.empty_table()
    return pa.concat_tables(pq.read_table(f, schema=schema) for f in files)
