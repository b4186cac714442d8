"""Outputs on object storage: records, manifests and whole directories round-trip through an ``s3://``
URI, and exploration writes to and resumes from one the same way it does a local directory (every
later stage on S3: tests/test_pipeline.py). The store is moto's S3-compatible server on loopback
(``s3_uri`` in conftest.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ste_ray.explore import ExploreSettings, check_output, run_exploration
from ste_ray.explore.episode import episode_id
from ste_ray.runs import OutputError, prepare_location, read_manifest, update_manifest
from ste_ray.schema import Episode, Trial, read_dataset, read_dir, read_records, write_records
from ste_ray.storage import Location
from tests.exploration_data import faithful_trials
from tests.test_explore import TINY, add_date, tool_cfg


def test_records_and_manifests_round_trip_through_s3(s3_uri):
    output = prepare_location(s3_uri("unit"))
    assert str(output) == "s3://ste-ray/unit"  # messages never show the URI's options (keys)
    trials, _ = faithful_trials()
    write_records(output / "trials" / "a.parquet", trials[:2], Trial)
    write_records(output / "trials" / "b.parquet", trials[2:], Trial)
    (output / "trials" / ".in-progress.tmp").write_bytes(b"")  # a write in flight is not listed
    assert [f.name for f in (output / "trials").files()] == ["a.parquet", "b.parquet"]
    assert read_records(output / "trials", Trial) == trials
    assert len(read_dir(Location.of(s3_uri("unit/trials")), Trial)) == len(trials)  # a URI is a location too
    update_manifest(output, {"status": "running"})
    update_manifest(output, {"status": "finished", "episodes": 3})
    assert read_manifest(output) == {"status": "finished", "episodes": 3}
    assert read_dir(output / "absent", Episode).num_rows == 0


def test_a_stage_reads_a_directory_as_a_dataset_with_rays_v1_parquet_reader(ray_session, s3_uri, tmp_path, capsys):
    """read_dataset: every row of a directory's files back, local and on S3, or only the asked columns;
    an empty dataset for no files. Ray Data's V1 reader (the V2 default lists files on new actors at every
    read: benchmarks/bench_parquet_reader.py), with Ray's own default left as it was."""
    import ray.data

    trials, _ = faithful_trials()
    for directory in (Location.of(tmp_path) / "trials", Location.of(s3_uri("dataset")) / "trials"):
        write_records(directory / "a.parquet", trials[:2], Trial)
        write_records(directory / "b.parquet", trials[2:], Trial)
        dataset = read_dataset(directory.files(), Trial)
        rows = pa.concat_tables(dataset.iter_batches(batch_format="pyarrow", batch_size=None)).to_pylist()
        assert sorted(rows, key=repr) == sorted(read_dir(directory, Trial).to_pylist(), key=repr)
        assert len(rows) == len(trials)
        assert read_dataset(directory.files(), Trial, ["api", "query"]).columns() == ["api", "query"]
        capsys.readouterr()
        dataset.explain()
        plan = capsys.readouterr().out
        assert "ReadParquet" in plan and "ListFiles" not in plan, plan
    assert ray.data.DataContext.get_current().use_datasource_v2  # Ray's default, untouched
    assert read_dataset((Location.of(tmp_path) / "absent").files(), Trial).count() == 0


def test_directories_upload_and_download_and_name_their_model_source(s3_uri, tmp_path):
    local = tmp_path / "merged"
    (local / "sub").mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    remote = Location.of(s3_uri("train")) / "merged"
    remote.upload(local)
    back = remote.download(tmp_path / "back")
    assert (back / "config.json").read_text() == "{}" and (back / "sub" / "weights.bin").stat().st_size == 1000
    # uri() is what a later job or a worker is handed: it keeps the options and the keys.
    assert remote.uri().startswith("s3://key:secret@ste-ray/train/merged?endpoint_override=")
    assert (Location.of(remote.uri()) / "config.json").read_text() == "{}"
    assert remote.staging_dir("train") == remote.staging_dir("train") != Location.of(s3_uri("other")).staging_dir("train")
    # What Ray Serve LLM's replicas are given to download a model: a plain URI and the environment
    # that carries what pyarrow read from the URI (Ray reads endpoint and keys only from there).
    source, env = remote.object_store_source()
    assert source == "s3://ste-ray/train/merged"
    assert env["AWS_ENDPOINT_URL_S3"].startswith("http://127.0.0.1:")
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_REGION"]) == ("key", "secret", "us-east-1")
    with pytest.raises(ValueError, match="only from s3://"):
        Location.of(tmp_path).object_store_source()  # a local directory is served as a path, not downloaded


@pytest.mark.engine
async def test_exploration_writes_to_and_resumes_from_s3(ray_session, engine, s3_uri):
    output = s3_uri("explore")
    cfg = tool_cfg()
    first = await run_exploration(engine, [add_date()], ExploreSettings(num_episodes=2, **TINY), cfg, output, "s1",
                                  progress=False)
    assert first.episodes_done == 2 and first.failures == []
    with pytest.raises(OutputError, match="already holds 2 episodes"):
        check_output(output, resume=False)
    resumed = await run_exploration(engine, [add_date()], ExploreSettings(num_episodes=3, **TINY), cfg, output, "s2",
                                    progress=False)
    assert (resumed.episodes_before, resumed.episodes_done) == (2, 1)
    episodes = read_dir(Location.of(output) / "episodes", Episode).to_pylist()
    assert sorted(e["episode_id"] for e in episodes) == [episode_id("add_date", i) for i in range(3)]
    trials = read_records(Location.of(output) / "trials", Trial)
    assert sorted({t.episode_id for t in trials}) == sorted(e["episode_id"] for e in episodes)
    assert all(s.observation.startswith('{"date": ') for t in trials for s in t.steps if s.tool_error_kind is None
               and s.action == "add_date")
