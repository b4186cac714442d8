"""The records the stages write and read, one typed definition each; the Parquet schema is derived
from the dataclass, so a field is declared once. A stage reads the previous stage's output
directory through ``read_dir`` / ``read_records`` (or ``read_dataset``, as a Ray Data dataset), so
each stage can be rerun alone.

explore writes, under its output directory:
  trials/*.parquet      ``Trial`` rows (one per STM slot: query, steps, answer, reflection)
  episodes/*.parquet    ``Episode`` rows (the whole conversation)
exploit writes:
  judged/*.parquet      ``JudgedTrial`` rows (every trial, kept or with the reason it was dropped)
  sft/*.parquet         ``SFTExample`` rows (chat examples for fine-tuning)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from ste_ray.storage import Location

R = TypeVar("R")

# ---------------------------------------------------------------------------------------------
# Exploration


@dataclasses.dataclass
class Step:
    """One turn of a trial that was not its final answer."""

    thought: str | None
    action: str | None
    action_input: str | None  # the model's raw Action Input text
    observation: str | None  # what the explorer was shown (a result, or a corrective message)
    parse_error: str | None  # why the turn did not parse, else null
    tool_error_kind: str | None  # the tool call's failure kind, else null
    latency_s: float


@dataclasses.dataclass
class Trial:
    """One STM slot of an episode: an imagined query, the calls made for it, the answer."""

    run_id: str
    api: str
    episode_id: str
    episode_index: int
    slot: int  # position of the trial in its episode's conversation
    query: str
    steps: list[Step]
    final_answer: str | None  # null when the trial ended without one
    reflection: str | None  # the explorer's raw answer; null with --no-reflection
    success: bool | None  # the explorer's own Yes/No; null when not asked or unclear
    num_calls: int
    num_parse_errors: int
    num_tool_errors: int
    executed: bool  # false under --no-exec
    constrained: bool
    grounding_call: str | None  # grounded imagination: the call the query was written from (JSON arguments)
    grounding_observation: str | None  # and its result
    matches_grounding: bool | None  # the trial's last clean call is that call (same arguments or result)
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


@dataclasses.dataclass
class Episode:
    run_id: str
    api: str
    episode_id: str
    episode_index: int
    conversation: str  # JSON list of chat messages, as sent to and received from the model
    num_trials: int
    stop_reason: str  # completed | context_full
    memory_size: int  # long-term memory entries the episode started with
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    # Of latency_s, the time the episode's model requests took; the rest is tool calls, parsing
    # and waiting for the actor's event loop.
    model_latency_s: float
    completion_tokens_per_request: list[int]  # each model reply's length, in order


# ---------------------------------------------------------------------------------------------
# Exploitation


@dataclasses.dataclass
class JudgedTrial:
    """A trial after exploit's filters: kept, or the first check that dropped it and why."""

    trial_key: str  # content hash of the trial: the cache key of the judge's verdicts
    api: str
    episode_id: str
    episode_index: int  # which of its API's episodes (every dev_every-th is the development set)
    slot: int
    query: str
    action: str | None  # the call the example teaches (the trial's last successful call)
    action_input: str | None
    observation: str | None
    final_answer: str | None
    kept: bool
    dropped_by: str | None  # the first failed check (see ste_ray.exploit), null when kept
    reason: str | None  # what exactly failed
    judge_informative: bool | None  # the judge's three aspects; null when not judged
    judge_faithful: bool | None
    judge_appropriate: bool | None
    judge_error: str | None  # the judge call failed after retries: kept, and reported


@dataclasses.dataclass
class SFTExample:
    """One chat example for fine-tuning, in the tool-mode format evaluation and serving use."""

    example_id: str
    api: str  # the API the example calls; empty for general data
    seed_key: str  # the trial it comes from (paraphrases share their seed's key)
    query: str
    paraphrase: bool
    messages: str  # JSON list of chat messages; the assistant turns are the training targets
    split: str  # train | validation (the development set's trials, never paraphrased)
    batch: int  # continual-learning round (0 without --batches)
    source: str  # explore | general


# ---------------------------------------------------------------------------------------------
# Parquet, derived from the records


def _arrow_type(tp: Any) -> pa.DataType:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return pa.list_(_arrow_type(typing.get_args(tp)[0]))
    if dataclasses.is_dataclass(tp):
        return pa.struct([(name, _arrow_type(t)) for name, t in typing.get_type_hints(tp).items()])
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[tp]


def arrow_schema(record: type, columns: list[str] | None = None) -> pa.Schema:
    """The Parquet schema of a record type (of its ``columns`` only, in that order)."""
    hints = typing.get_type_hints(record)
    return pa.schema([(name, _arrow_type(hints[name])) for name in columns or hints])


def _from_value(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return [_from_value(typing.get_args(tp)[0], v) for v in value]
    if dataclasses.is_dataclass(tp):
        return from_row(tp, value)
    return value


def from_row(record: type[R], row: dict[str, Any]) -> R:
    """A record from a Parquet row (a dict, nested records as dicts)."""
    hints = typing.get_type_hints(record)
    return record(**{name: _from_value(hints[name], row.get(name)) for name in hints})


def write_records(path: str | Path | Location, records: list[Any], record: type) -> None:
    """Write records as one Parquet file, atomically (see ``ste_ray.storage``)."""
    rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r for r in records]
    Location.of(path).write_table(pa.Table.from_pylist(rows, schema=arrow_schema(record)))


def read_dir(directory: str | Path | Location, record: type, columns: list[str] | None = None) -> pa.Table:
    """All Parquet files of a directory (local or a filesystem URI) as one table of ``record`` rows
    (empty if none), or of their ``columns`` only."""
    schema = arrow_schema(record, columns)
    files = Location.of(directory).files()
    if not files:
        return schema.empty_table()
    return pa.concat_tables(f.read_table(schema, columns) for f in files)


# Ray 2.60's default Parquet reader (Ray Data's V2 datasource) lists the files on new FooterReader
# actors at every read: 5-8 s for a few small files on 2 cores, where the V1 reader takes under a
# second (benchmarks/bench_parquet_reader.py). The stages read small directories, many times a run.
RAY_DATA_PARQUET_V2 = False


def read_dataset(files: list[Location], record: type, columns: list[str] | None = None):
    """Parquet ``files`` (a directory's, as ``Location.files()`` lists them: the caller lists once and
    may use the list again) as a Ray Data dataset of ``record`` rows (or their ``columns``), read with
    Ray Data's V1 Parquet reader unless ``RAY_DATA_PARQUET_V2``; an empty dataset for no files."""
    import ray.data

    schema = arrow_schema(record, columns)
    if not files:
        return ray.data.from_arrow(schema.empty_table())
    context = ray.data.DataContext.get_current()  # read_parquet picks the reader from it, then and there
    default, context.use_datasource_v2 = context.use_datasource_v2, RAY_DATA_PARQUET_V2
    try:
        return ray.data.read_parquet([f.path for f in files], filesystem=files[0].fs, schema=schema, columns=columns)
    finally:
        context.use_datasource_v2 = default


def read_records(directory: str | Path | Location, record: type[R]) -> list[R]:
    return [from_row(record, row) for row in read_dir(directory, record).to_pylist()]


def finished_episodes(exploration: str | Path | Location) -> set[str]:
    """An exploration's finished episodes, as "<episode_id>/<run_id>" keys: a trial counts only when
    the run that wrote it also wrote its episode row (a run killed between the two files leaves trial
    rows that a later run writes again)."""
    table = read_dir(Location.of(exploration) / "episodes", Episode).select(["episode_id", "run_id"])
    return {f"{e}/{r}" for e, r in zip(table.column("episode_id").to_pylist(), table.column("run_id").to_pylist())}


def finished_trials(exploration: str | Path | Location) -> pa.Table:
    """The trials of an exploration's finished episodes (see ``finished_episodes``)."""
    trials = read_dir(Location.of(exploration) / "trials", Trial)
    keys = pa.array([f"{e}/{r}" for e, r in zip(trials.column("episode_id").to_pylist(),
                                                  trials.column("run_id").to_pylist())], pa.string())
    return trials.filter(pc.is_in(keys, pa.array(sorted(finished_episodes(exploration)), pa.string())))
