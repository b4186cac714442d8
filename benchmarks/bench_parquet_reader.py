"""Benchmark of Ray Data's two Parquet readers under ste-ray's stages, in one run on one Ray instance:
Ray 2.60's default (the V2 datasource, which lists files on new FooterReader actors at every read)
÷ the V1 reader that ``ste_ray.schema.read_dataset`` uses, alternating, on

  (a) one read of an exploration's trials/ (what every read of a stage's input pays);
  (b) a whole exploitation of it without a model (free checks, dedup with its embeddings, SFT
      formatting: ``--exploit.judge none``, no paraphrases), the four reads a run makes included.

on the exploration outputs --inputs names (by default outputs/explore, which the README's first
command writes).

    python benchmarks/bench_parquet_reader.py --repeats 3
"""

import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import psutil

import ste_ray.schema
from ste_ray.config import job_config, option, to_dict
from ste_ray.exploit import ExploitSettings, run_exploit
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster
from ste_ray.schema import Trial, read_dataset
from ste_ray.storage import Location

READERS = {"V2 (Ray's default)": True, "V1 (ste-ray)": False}


@dataclasses.dataclass
class BenchParquetReaderConfig:
    """Ray Data's V2 Parquet reader vs V1, on reads and on a whole exploitation."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    inputs: list[str] = option(default_factory=lambda: ["outputs/explore"],
                               help="Exploration output directories (outputs/explore: the README's first command's)")
    repeats: int = option(3, help="Runs of each reader per input, alternating", ge=1)
    output: str = option("results/bench_parquet_reader.json", help="Where the JSON results go")


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def read_all(directory: Path) -> int:
    return sum(b.num_rows for b in read_dataset((Location.of(directory) / "trials").files(), Trial).iter_batches(
        batch_format="pyarrow", batch_size=None))


def exploit(directory: Path) -> None:
    with tempfile.TemporaryDirectory() as out:
        run_exploit(directory, Path(out), ExploitSettings(judge="none", target_per_api=0), None, None, False,
                    progress=False)


def measure(directory: Path, repeats: int) -> dict:
    seconds: dict[str, dict[str, list[float]]] = {name: {"read": [], "exploit": []} for name in READERS}
    for _ in range(repeats):
        for name, v2 in READERS.items():
            ste_ray.schema.RAY_DATA_PARQUET_V2 = v2
            seconds[name]["read"].append(round(timed(lambda: read_all(directory)), 2))
            seconds[name]["exploit"].append(round(timed(lambda: exploit(directory)), 2))
    ste_ray.schema.RAY_DATA_PARQUET_V2 = False
    (v2_name, v1_name) = READERS
    return {"trials": read_all(directory), "seconds": seconds,
            "v2_over_v1": {part: round(statistics.median(seconds[v2_name][part]) /
                                       statistics.median(seconds[v1_name][part]), 2) for part in ("read", "exploit")}}


def main() -> None:
    cfg = job_config(BenchParquetReaderConfig)
    results = {"benchmark": "parquet_reader", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg), "inputs": {}}
    missing = [d for d in cfg.inputs if not (Path(d) / "trials").is_dir()]
    if missing:
        raise SystemExit(f"error: inputs: {', '.join(missing)} holds no exploration (run jobs/explore.py first)")
    with ray_cluster(cfg.ray):
        for directory in cfg.inputs:
            print(f"{directory}: {cfg.repeats} x 2 readers ...", flush=True)
            results["inputs"][directory] = measure(Path(directory), cfg.repeats)
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    rows = []
    for name, measured in results["inputs"].items():
        for part in ("read", "exploit"):
            medians = [statistics.median(measured["seconds"][reader][part]) for reader in READERS]
            rows.append([name, measured["trials"], part, *medians, measured["v2_over_v1"][part]])
    print(format_table(["input", "trials", "work", *(f"{r} median s" for r in READERS), "V2 ÷ V1"], rows))
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
