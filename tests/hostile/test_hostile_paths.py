"""Issue 19, the paths around a job: every path bertbatch writes (output, rejects, parts, partitions) is checked
before the first row is scored; every committed part of every format is verified on --resume; --overwrite of a
directory job keeps the old result readable until the new one is complete; an output's name means its format;
what is written is UTF-8 and strict JSON whatever the locale."""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import csv

from hostile_helpers import cli, job_state, parts_table, run_killed, texts_table

KILLED = -signal.SIGKILL


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(texts_table(300), path)
    return path


def _ragged_csv(path, rows=50, bad=(7,)):
    lines = [f"{i:06d},great movie {i}" for i in range(rows)]
    for i in bad:
        lines[i] = f"{i:06d},too,many,{i}"
    path.write_text("id,text\n" + "\n".join(lines) + "\n")
    return path


def _siblings(out):
    """What a staged --overwrite may leave beside the output."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _bertbatch(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    """`bertbatch ARGS` in a fresh interpreter (locale, limits and descriptors of its own)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bertbatch", *map(str, args)], env=env, capture_output=True,
                          timeout=180, **kwargs)


def _one_error_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, text
    return errors[0]


# ------------------------------------------------------------------------------------ class 1: the rejects path
def test_rejects_equal_to_the_input_is_refused_and_the_input_kept(tmp_path, model):
    src = _ragged_csv(tmp_path / "in.csv")
    before = src.read_bytes()
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject", "--rejects", src).assert_error(
        1, "--rejects", str(src), "input")
    assert src.read_bytes() == before and not out.exists()


def test_rejects_equal_to_the_output_is_refused(tmp_path, model):
    src = _ragged_csv(tmp_path / "in.csv")
    out = tmp_path / "o.csv"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject", "--rejects", out).assert_error(
        1, "--rejects", "-o", str(out))
    assert not out.exists()


@pytest.mark.parametrize("explicit", [True, False], ids=["--rejects", "default OUT.rejects.csv"])
def test_an_existing_rejects_file_needs_overwrite(tmp_path, model, explicit):
    src = _ragged_csv(tmp_path / "in.csv")
    out = tmp_path / "o.parquet"
    rejects = tmp_path / "r.csv" if explicit else tmp_path / "o.parquet.rejects.csv"
    rejects.write_text("precious")
    args = ["score", model, src, "-o", out, "--on-bad-rows", "reject"] + (["--rejects", rejects] if explicit else [])
    cli(*args).assert_error(1, str(rejects), "exists", "--overwrite")
    assert rejects.read_text() == "precious" and not out.exists()
    cli(*args, "--overwrite").assert_ok()
    assert [r["where"] for r in csv.read_csv(rejects).to_pylist()] == ["record 9"]


def test_rejects_in_a_missing_directory_fails_before_the_output_is_published(tmp_path, model):
    src = _ragged_csv(tmp_path / "in.csv")
    out = tmp_path / "o.parquet"
    missing = tmp_path / "missing_dir" / "r.csv"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject", "--rejects", missing).assert_error(
        4, "--rejects", str(missing.parent), "does not exist")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


# ------------------------------------------------------------------- class 2: CSV and JSONL parts on --resume
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_finds_a_csv_or_jsonl_part_cut_since_the_crash(tmp_path, model, src, fmt):
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "100", "--format", fmt]
    assert run_killed("recorded", 2, *args).returncode == KILLED
    part = out / f"part-00000-00000.{fmt}"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 3])
    cli(*args, "--resume").assert_error(4, part.name, "--overwrite")
    assert not (out / "_SUCCESS").exists() and not job_state(out)["complete"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_finds_a_csv_or_jsonl_part_with_two_records_merged_at_the_same_size(tmp_path, model, src, fmt):
    """Same byte size, a line break replaced by a space: the record count (or the parse) catches what the size
    cannot."""
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--rows-per-part", "100", "--format", fmt]
    assert run_killed("recorded", 2, *args).returncode == KILLED
    part = out / f"part-00000-00001.{fmt}"
    data = part.read_bytes()
    cut = data.index(b"\n", len(data) // 2)
    part.write_bytes(data[:cut] + b" " + data[cut + 1:])
    cli(*args, "--resume").assert_error(4, part.name, "--overwrite")


def test_resume_of_intact_csv_parts_equals_an_uninterrupted_run(tmp_path, model, src):
    out, ref = tmp_path / "out", tmp_path / "ref"
    args = ["--rows-per-part", "100", "--format", "csv"]
    cli("score", model, src, "-o", ref, *args).assert_ok()
    assert run_killed("recorded", 2, "score", model, src, "-o", out, *args).returncode == KILLED
    assert all("bytes" in p for p in job_state(out)["parts"])
    cli("score", model, src, "-o", out, *args, "--resume").assert_ok()
    for part in sorted(ref.glob("part-*.csv")):
        assert (out / part.name).read_bytes() == part.read_bytes()


# ------------------------------------------------------------------ class 3: --overwrite of a finished job
@pytest.fixture
def finished(tmp_path, model, src):
    """A finished directory job and a second input whose --overwrite would replace it."""
    out = tmp_path / "out"
    cli("score", model, src, "-o", out, "--rows-per-part", "100").assert_ok()
    new = tmp_path / "new.parquet"
    pq.write_table(texts_table(400, "n"), new)
    return out, parts_table(out), new


def _assert_old_job_intact(out, old):
    assert job_state(out)["complete"] and (out / "_SUCCESS").exists()
    assert parts_table(out).equals(old)


def test_overwrite_killed_midway_leaves_the_old_job_complete(tmp_path, model, finished):
    out, old, new = finished
    args = ["score", model, new, "-o", out, "--rows-per-part", "100", "--overwrite"]
    assert run_killed("recorded", 2, *args).returncode == KILLED
    _assert_old_job_intact(out, old)
    assert _siblings(out) == [".out.bertbatch-overwrite"]  # the staged new job, named
    cli(*args).assert_ok()  # a fresh --overwrite starts the staging again
    assert parts_table(out).column("id").to_pylist() == texts_table(400, "n").column("id").to_pylist()
    assert _siblings(out) == []


def test_overwrite_killed_before_its_success_then_resume_swaps_the_new_job_in(tmp_path, model, finished):
    out, old, new = finished
    ref = tmp_path / "ref"
    cli("score", model, new, "-o", ref, "--rows-per-part", "100").assert_ok()
    args = ["score", model, new, "-o", out, "--rows-per-part", "100"]
    assert run_killed("before-success", 1, *args, "--overwrite").returncode == KILLED
    _assert_old_job_intact(out, old)
    cli(*args, "--resume").assert_ok()  # continues the staged overwrite, then swaps it in
    assert parts_table(out).equals(parts_table(ref)) and job_state(out)["complete"]
    assert _siblings(out) == []


def test_overwrite_killed_right_after_the_swap_leaves_the_new_job(tmp_path, model, finished):
    out, old, new = finished
    args = ["score", model, new, "-o", out, "--rows-per-part", "100"]
    assert run_killed("swapped", 1, *args, "--overwrite").returncode == KILLED
    assert parts_table(out).num_rows == 400 and job_state(out)["complete"]
    cli(*args, "--resume").assert_ok()  # the leftover (the replaced job) is recognised, not swapped back
    assert parts_table(out).num_rows == 400 and _siblings(out) == []


def test_overwrite_whose_new_input_has_a_bad_row_keeps_the_old_job(tmp_path, model, finished):
    out, old, _ = finished
    bad = _ragged_csv(tmp_path / "bad.csv", rows=300, bad=(250,))
    cli("score", model, bad, "-o", out, "--rows-per-part", "100", "--overwrite").assert_error(1, "record 252")
    _assert_old_job_intact(out, old)
    assert _siblings(out) == []


# ------------------------------------------------------------------------- class 6: output names mean formats
def test_csv_gz_output_is_gzip_csv_that_bertbatch_reads_back(tmp_path, model, src):
    out = tmp_path / "o.csv.gz"
    cli("score", model, src, "-o", out).assert_ok()
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    table = csv.read_csv(gzip.open(out))
    assert table.num_rows == 300 and "label" in table.column_names
    cli("score", model, out, "-o", tmp_path / "again.parquet", "--keep", "id").assert_ok()
    assert pq.read_table(tmp_path / "again.parquet").num_rows == 300


def test_tsv_output_is_tab_delimited(tmp_path, model, src):
    out = tmp_path / "o.tsv"
    cli("score", model, src, "-o", out).assert_ok()
    assert out.read_text().splitlines()[0].split("\t")[:3] == ['"id"', '"text"', '"label"']
    assert csv.read_csv(out, parse_options=csv.ParseOptions(delimiter="\t")).num_rows == 300


@pytest.mark.parametrize("name", ["o.json", "o.txt", "results.v2"])
def test_an_output_suffix_naming_no_format_is_refused(tmp_path, model, src, name):
    cli("score", model, src, "-o", tmp_path / name).assert_error(1, name, ".csv.gz", ".tsv", "--format")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_file_uris_are_local_paths_for_output_input_and_model(tmp_path, model, src, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "x.parquet"
    cli("score", f"file://{model}", f"file://{src}", "-o", f"file://{out}").assert_ok()
    assert pq.read_table(out).num_rows == 300 and list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------ class 7: output inside its input directory
def test_an_output_directory_inside_its_input_directory_is_refused(tmp_path, model):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(texts_table(50), folder / "a.parquet")
    out = folder / "scored"
    cli("score", model, folder, "-o", out).assert_error(1, str(out), str(folder))
    assert not out.exists()


# --------------------------------------------------------------------- class 9: encodings and strictness
@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_jsonl_on_stdout_is_utf8_whatever_pythonioencoding(tmp_path, model, encoding):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["1"], "text": ["café 東京 naïve"]}), src)
    done = _bertbatch("score", model, src, "-o", "-", "--format", "jsonl", "--silent",
                      env={"PYTHONIOENCODING": encoding, "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout.decode("utf-8"))["text"] == "café 東京 naïve"


def test_jsonl_is_strict_json_nan_and_infinity_become_null(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"x": [float("nan"), float("inf"), 1.5], "text": ["a", "b", "c"]}), src)
    out = tmp_path / "o.jsonl"
    cli("score", model, src, "-o", out).assert_ok()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    rows = [json.loads(line, parse_constant=refuse) for line in out.read_text().splitlines()]
    assert [r["x"] for r in rows] == [None, None, 1.5] and all(r["label"] for r in rows)


def test_scoring_to_a_closed_stdout_is_a_one_line_output_error(tmp_path, model, src):
    done = _bertbatch("score", model, src, "-o", "-", "--silent", preexec_fn=lambda: os.close(1))
    assert done.returncode == 4, done.stderr.decode()
    assert "standard output is closed" in _one_error_line(done.stderr)


# ----------------------------------------------------------------------- class 10: partition values that cannot be names
def _partition_dirs(out):
    return [p for p in out.rglob("*=*") if p.is_dir()] if out.exists() else []


def test_a_partition_value_longer_than_a_file_name_is_refused_naming_the_column(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"k": ["short"] * 5 + ["v" * 300], "text": ["good"] * 6}), src)
    out = tmp_path / "out"
    cli("score", model, src, "-o", out, "--partition-by", "k").assert_error(1, "--partition-by k", "300 characters")
    assert _partition_dirs(out) == []


def test_more_partition_values_than_open_files_is_refused_naming_the_column(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"k": [f"v{i}" for i in range(600)], "text": ["good"] * 600}), src)
    out = tmp_path / "out"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    done = _bertbatch("score", model, src, "-o", out, "--partition-by", "k", "--silent",
                      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (384, hard)))
    assert done.returncode == 1, done.stderr.decode()
    assert "--partition-by k" in _one_error_line(done.stderr)
    assert _partition_dirs(out) == []


def test_non_utf8_binary_partition_values_are_refused_naming_the_column(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"k": pa.array([b"ok", b"\xff\xfe"], pa.binary()), "text": ["good", "bad"]}), src)
    out = tmp_path / "out"
    cli("score", model, src, "-o", out, "--partition-by", "k").assert_error(1, "column 'k'", "not UTF-8",
                                                                            "--partition-by")
    assert _partition_dirs(out) == []
