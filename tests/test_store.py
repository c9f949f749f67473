"""Object stores: inputs, outputs, jobs and model directories as s3:// URIs against a real S3-protocol server
(moto in server mode, a separate process on 127.0.0.1; s3server.py, fixtures `s3_server` and `s3`). Credentials reach bertbatch only
through the standard AWS environment variables, never through its options."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pyarrow import csv

from bertbatch import score_file
from bertbatch.cli import cli
from bertbatch.errors import InputError, ModelError, OutputError
from helpers import make_texts


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    csv.write_csv(table, sink)
    return sink.getvalue()


def _tables(files: int, rows: int, seed: int = 5) -> list[pa.Table]:
    texts, _ = make_texts(files * rows, seed=seed)
    return [pa.table({"id": [f"{f}-{i:05d}" for i in range(rows)], "text": texts[f * rows:(f + 1) * rows]})
            for f in range(files)]


def _local_copy(tmp_path: Path, tables: list[pa.Table]) -> Path:
    src = tmp_path / "local-in"
    src.mkdir()
    for f, table in enumerate(tables):
        pq.write_table(table, src / f"part-{f}.parquet")
    return src


def test_reads_a_prefix_of_csv_and_parquet_files_from_s3(s3, tmp_path, tiny_exported):
    tables = _tables(4, 60)
    s3.put("in/a.csv", _csv_bytes(tables[0]))
    s3.put("in/b.parquet", _parquet_bytes(tables[1]))
    s3.put("in/sub/c.csv.gz", __import__("gzip").compress(_csv_bytes(tables[2])))
    s3.put("in/sub/d.parquet", _parquet_bytes(tables[3]))
    s3.put("in/_SUCCESS", b"")  # Spark/Hive markers are not data
    s3.put("in/.d.parquet.crc", b"junk")
    s3.put("other/e.parquet", _parquet_bytes(tables[0]))  # outside the prefix

    out = tmp_path / "out.parquet"
    summary = score_file(s3.uri("in"), out, tiny_exported)

    result = pq.read_table(out)
    expected = pa.concat_tables(tables)
    assert summary["rows_in"] == summary["rows_written"] == 240
    assert result["id"].to_pylist() == expected["id"].to_pylist()
    reference = tmp_path / "reference.parquet"
    score_file(_local_copy(tmp_path, tables), reference, tiny_exported)
    assert result.select(["id", "text", "label", "score"]).equals(pq.read_table(reference).select(["id", "text", "label", "score"]))


def _job_command(model, src: str, out: str) -> list[str]:
    return [sys.executable, "-m", "bertbatch", "score", str(model), src, "-o", out, "--rows-per-part", "150",
            "--max-batch-rows", "16", "--window-rows", "50", "--probs", "--silent"]


def _store_parts(s3, prefix: str) -> pa.Table:
    keys = sorted(k for k in s3.listing(prefix) if k.rsplit("/", 1)[-1].startswith("part-"))
    return pa.concat_tables([pq.read_table(io.BytesIO(s3.get(k))) for k in keys])


def test_s3_directory_job_sigkilled_mid_job_resumes_to_the_uninterrupted_output(s3, tmp_path, tiny_exported):
    tables = _tables(3, 600)
    for f, table in enumerate(tables):
        s3.put(f"in/part-{f}.parquet", _parquet_bytes(table))
    env = {**os.environ, **s3.env, "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    subprocess.run(_job_command(tiny_exported, s3.uri("in"), s3.uri("reference")), env=env, check=True)
    duration = time.monotonic() - start
    expected = _store_parts(s3, "reference/")
    assert expected.num_rows == 1800

    rng = random.Random(13)
    mid_job_kills = 0
    for attempt in range(10):
        proc = subprocess.Popen(_job_command(tiny_exported, s3.uri("in"), s3.uri("killed")) + (["--resume"] if attempt else []),
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.4, 0.8) * duration)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        listing = s3.listing("killed/")
        for key in listing:  # whatever the store shows under a part name is a complete Parquet file
            if key.rsplit("/", 1)[-1].startswith("part-"):
                pq.ParquetFile(io.BytesIO(s3.get(key))).metadata
        if "killed/_SUCCESS" in listing:
            break
        if "killed/_manifest.json" in listing and json.loads(s3.get("killed/_manifest.json"))["state"]["parts"]:
            mid_job_kills += 1
    else:
        subprocess.run(_job_command(tiny_exported, s3.uri("in"), s3.uri("killed")) + ["--resume"], env=env, check=True)
    assert mid_job_kills >= 1, "no kill landed mid-job: the test proved nothing"
    assert "killed/_SUCCESS" in s3.listing("killed/")
    assert _store_parts(s3, "killed/").equals(expected)
    state = json.loads(s3.get("killed/_manifest.json"))["state"]
    assert state["complete"] and state["rows_in"] == state["rows_written"] == 1800


def test_finished_s3_job_rerun_changes_nothing_and_refusals_hold(s3, tmp_path, tiny_exported):
    tables = _tables(2, 200)
    for f, table in enumerate(tables):
        s3.put(f"in/part-{f}.parquet", _parquet_bytes(table))
    score_file(s3.uri("in"), s3.uri("out"), tiny_exported, rows_per_part=150)
    before = s3.listing("out/")
    assert sorted(before) == ["out/_SUCCESS", "out/_manifest.json", "out/part-00000-00000.parquet",
                              "out/part-00000-00001.parquet", "out/part-00001-00000.parquet",
                              "out/part-00001-00001.parquet"]

    summary = score_file(s3.uri("in"), s3.uri("out"), tiny_exported, rows_per_part=150, resume=True)
    assert summary["resumed"] and summary["rows_this_run"] == 0 and summary["rows_written"] == 400
    assert s3.listing("out/") == before  # same keys, sizes, ETags and modification times

    with pytest.raises(InputError, match="holds a bertbatch job. Pass --resume to continue.*--overwrite"):
        score_file(s3.uri("in"), s3.uri("out"), tiny_exported, rows_per_part=150)
    with pytest.raises(InputError, match=r"Cannot resume .*--rows-per-part \(150 -> 100\)"):
        score_file(s3.uri("in"), s3.uri("out"), tiny_exported, rows_per_part=100, resume=True)
    with pytest.raises(InputError, match="would overwrite the input"):
        score_file(s3.uri("in"), s3.uri("in"), tiny_exported, overwrite=True)
    score_file(s3.uri("in"), s3.uri("out"), tiny_exported, rows_per_part=400, overwrite=True)
    after = s3.listing("out/")  # --overwrite removed what the manifest listed, then wrote the new job
    assert "out/part-00000-00001.parquet" not in after and "out/part-00001-00000.parquet" in after
    s3.put("out/notes.txt", b"not bertbatch's")  # a file bertbatch did not write: the job is refused
    with pytest.raises(OutputError, match="holds files bertbatch did not write \\(notes.txt\\)"):
        score_file(s3.uri("in"), s3.uri("out"), tiny_exported, rows_per_part=400, overwrite=True)
    assert s3.get("out/notes.txt") == b"not bertbatch's"


def test_model_directory_read_from_s3_is_cached_once_and_hash_checked(s3, tmp_path, tiny_exported):
    s3.upload_dir(tiny_exported, "models/tiny")
    src = _local_copy(tmp_path, _tables(1, 50))
    cache = tmp_path / "cache"
    runner = CliRunner()
    args = ["score", s3.uri("models/tiny"), str(src), "--model-cache", str(cache), "--silent"]
    done = runner.invoke(cli, args + ["-o", str(tmp_path / "a.parquet")])
    assert done.exit_code == 0, done.output
    copies = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(copies) == 1
    stamp = copies[0] / ".bertbatch-cache.json"
    first = stamp.stat().st_mtime_ns
    done = runner.invoke(cli, args + ["-o", str(tmp_path / "b.parquet")])
    assert done.exit_code == 0, done.output
    assert stamp.stat().st_mtime_ns == first  # reused, not copied again
    reference = tmp_path / "local.parquet"
    score_file(src, reference, tiny_exported)
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(reference))

    graph = (tiny_exported / "onnx" / "model_int8.onnx").read_bytes()
    # the store's copy changed under us (a new size: stores' modification times have a 1 s resolution)
    s3.put("models/tiny/onnx/model_int8.onnx", graph[:-64] + bytes(128))
    with pytest.raises(ModelError, match=r"onnx/model_int8.onnx: SHA-256 .* differs from .* recorded in bertbatch.json"):
        score_file(src, tmp_path / "c.parquet", s3.uri("models/tiny"), model_cache=str(cache))


def test_uri_with_credentials_is_refused_without_echoing_them(s3, tmp_path, tiny_exported):
    secret = "SUPERSECRETVALUE"
    done = CliRunner().invoke(cli, ["score", str(tiny_exported), f"s3://key:{secret}@{s3.name}/in", "-o",
                                    str(tmp_path / "o.parquet")])
    assert done.exit_code == InputError.exit_code
    assert "carries credentials" in done.output and "AWS_ACCESS_KEY_ID" in done.output
    assert secret not in done.output
    with pytest.raises(InputError, match="carries credentials") as caught:
        score_file(f"s3://{s3.name}/in?secret_key={secret}", tmp_path / "o.parquet", tiny_exported)
    assert secret not in str(caught.value)


def test_any_fsspec_scheme_works_through_the_fallback(tmp_path, tiny_exported):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    table = _tables(1, 30)[0]
    with memory.open("/bertbatch-test/in/t.parquet", "wb") as fh:
        fh.write(_parquet_bytes(table))
    summary = score_file("memory://bertbatch-test/in", "memory://bertbatch-test/out", tiny_exported)
    assert summary["rows_written"] == 30
    assert memory.exists("/bertbatch-test/out/_SUCCESS")
    with memory.open("/bertbatch-test/out/part-00000-00000.parquet", "rb") as fh:
        assert pq.read_table(fh)["id"].to_pylist() == table["id"].to_pylist()


def test_partition_by_on_s3_reads_back_with_hive_partitioning(s3, tmp_path, tiny_exported):
    import pyarrow.dataset as ds
    from pyarrow import fs as pafs

    table = _tables(1, 90)[0].append_column("region", pa.array(["eu", "us", "ap"] * 30))
    s3.put("in/region-table.parquet", _parquet_bytes(table))
    score_file(s3.uri("in"), s3.uri("out"), tiny_exported, partition_by=("region",), rows_per_part=40)
    keys = sorted(s3.listing("out/"))
    assert "out/region=eu/part-00000-00000.parquet" in keys and keys[-1] == "out/region=us/part-00000-00002.parquet"
    assert "out/_SUCCESS" in keys
    store = pafs.S3FileSystem(endpoint_override=s3.server.endpoint, region="us-east-1")
    back = ds.dataset(f"{s3.name}/out", filesystem=store, format="parquet", partitioning="hive",
                      exclude_invalid_files=True).to_table()
    got = sorted(zip(back["id"].to_pylist(), back["region"].to_pylist()))
    assert got == sorted(zip(table["id"].to_pylist(), table["region"].to_pylist()))
