"""Kill a job at every commit point (temp written, renamed, recorded, before _SUCCESS), change what it
depends on between the crash and --resume, and check: nothing partial under a final name, rows in = rows
written + rows rejected, each rejected row once, and output equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pyarrow.parquet as pq
import pytest
from pyarrow import csv

from bertbatch.errors import EXIT_INPUT, EXIT_OUTPUT
from hostile_helpers import cli, job_state, parts_table, run_killed, texts_table

KILLED = -signal.SIGKILL


def _ragged_csv(path, rows=4000, bad=(150, 3500)):
    lines = [f"{i:06d},{texts_table(1)['text'][0].as_py()} {i}" for i in range(rows)]
    for i in bad:
        lines[i] = f"{i:06d},too,many,{i}"
    path.write_text("id,text\n" + "\n".join(lines) + "\n")
    return path


def _check_complete(out, rows_in):
    state = job_state(out)
    assert state["complete"] and (out / "_SUCCESS").exists()
    assert state["rows_in"] == rows_in == state["rows_written"] + state["rows_rejected"]
    return state


def _check_nothing_partial(out):
    for part in out.glob("part-*"):
        assert pq.ParquetFile(part).metadata.num_rows > 0  # every file under a final name is complete and readable
    assert not (out / "_SUCCESS").exists() or job_state(out)["complete"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_exported):
    """An uninterrupted job over two files (one CSV with two ragged rows far apart): what every resume must equal."""
    root = tmp_path_factory.mktemp("faults")
    src = root / "in"
    src.mkdir()
    _ragged_csv(src / "a.csv")
    pq.write_table(texts_table(1500, "b"), src / "b.parquet")
    out = root / "reference"
    cli("score", tiny_exported, src, "-o", out, "--rows-per-part", "1000", "--on-bad-rows", "reject").assert_ok()
    return src, parts_table(out), csv.read_csv(out / "_rejects.csv").to_pylist()


@pytest.mark.parametrize("point, nth", [
    ("temp-written", 1), ("published", 1), ("recorded", 1),
    ("temp-written", 3), ("published", 4), ("recorded", 5),
    ("before-success", 1),
])
def test_kill_at_a_commit_point_then_resume_equals_uninterrupted(tmp_path, model, reference, point, nth):
    src, expected, expected_rejects = reference
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "1000", "--on-bad-rows", "reject", "--silent"]
    killed = run_killed(point, nth, *args)
    assert killed.returncode == KILLED, killed.stderr
    _check_nothing_partial(out)
    cli(*args, "--resume").assert_ok()
    state = _check_complete(out, 5500)
    assert state["rows_rejected"] == 2
    assert parts_table(out).equals(expected)
    assert csv.read_csv(out / "_rejects.csv").to_pylist() == expected_rejects
    assert [r["where"] for r in expected_rejects] == ["record 152", "record 3502"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_ragged_rows_far_apart_survive_a_crash_and_resume(tmp_path, model):
    """Class 1: the second ragged row was in neither output nor rejects, and rows_in was one short."""
    src = _ragged_csv(tmp_path / "in.csv", rows=20_000, bad=(100, 15_000))
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "5000", "--on-bad-rows", "reject", "--silent"]
    assert run_killed("recorded", 1, *args).returncode == KILLED
    cli(*args, "--resume").assert_ok()
    state = _check_complete(out, 20_000)
    rejects = csv.read_csv(out / "_rejects.csv").to_pylist()
    assert [r["where"] for r in rejects] == ["record 102", "record 15002"]
    assert state["rows_rejected"] == 2 and state["rows_written"] == 19_998


@pytest.mark.parametrize("change, changed_file", [
    ("graph", "onnx/model_int8.onnx"), ("tokenizer", "tokenizer.json"), ("config", "config.json"),
])
def test_resume_refuses_a_model_changed_between_crash_and_resume(tmp_path, model, change, changed_file):
    """Class 2: the fingerprint is computed from the bytes that run, not read from bertbatch.json."""
    m = tmp_path / "m"
    shutil.copytree(model, m)
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(3000), src)
    out = tmp_path / "out"
    args = ["score", m, src, "-o", out, "--rows-per-part", "1000", "--graph", "int8", "--silent"]
    assert run_killed("recorded", 1, *args).returncode == KILLED
    if change == "graph":
        shutil.copy(m / "onnx" / "model.onnx", m / "onnx" / "model_int8.onnx")
    elif change == "tokenizer":
        tok = json.loads((m / "tokenizer.json").read_text())
        tok["normalizer"] = None
        (m / "tokenizer.json").write_text(json.dumps(tok))
    else:
        config = json.loads((m / "config.json").read_text())
        config["id2label"] = {"0": "bad", "1": "good"}
        config["label2id"] = {"bad": 0, "good": 1}
        (m / "config.json").write_text(json.dumps(config))
    # the message names the changed file (a bare "model" would match the tmp path itself)
    cli(*args, "--resume").assert_error(EXIT_INPUT, "Cannot resume", f"the model files that run ({changed_file})")
    assert not (out / "_SUCCESS").exists()


def test_resume_refuses_an_input_rewritten_with_the_same_size_and_mtime(tmp_path, model):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i:05d},great movie {i:05d}\n" for i in range(3000)))
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "1000", "--silent"]
    assert run_killed("recorded", 1, *args).returncode == KILLED
    stat = src.stat()
    src.write_text(src.read_text().replace("great", "awful"))
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert src.stat().st_size == stat.st_size
    cli(*args, "--resume").assert_error(EXIT_INPUT, "Cannot resume", "in.csv")


def test_a_part_deleted_between_crash_and_resume_is_a_message(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(3000), src)
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "1000", "--silent"]
    assert run_killed("recorded", 2, *args).returncode == KILLED
    (out / "part-00000-00000.parquet").unlink()
    cli(*args, "--resume").assert_error(EXIT_OUTPUT, "part-00000-00000.parquet", "missing", "--overwrite")


def test_a_part_truncated_between_crash_and_resume_is_a_message(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(3000), src)
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "1000", "--silent"]
    assert run_killed("recorded", 2, *args).returncode == KILLED
    part = out / "part-00000-00000.parquet"
    part.write_bytes(part.read_bytes()[:100])
    cli(*args, "--resume").assert_error(EXIT_OUTPUT, "part-00000-00000.parquet", "--overwrite")


def test_a_crashed_job_is_not_mistaken_for_a_finished_one(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(2000), src)
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "1000", "--silent"]
    assert run_killed("before-success", 1, *args).returncode == KILLED
    assert not (out / "_SUCCESS").exists()
    cli(*args).assert_error(EXIT_INPUT, "--resume")
    cli(*args, "--resume").assert_ok()
    assert parts_table(out)["id"].to_pylist() == texts_table(2000)["id"].to_pylist()


def test_overwrite_after_a_crash_removes_its_temp_files(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(3000), src)
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "1000", "--silent"]
    assert run_killed("temp-written", 2, *args).returncode == KILLED
    assert [p for p in out.iterdir() if p.name.endswith(".tmp")]
    cli(*args, "--overwrite").assert_ok()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    _check_complete(out, 3000)
