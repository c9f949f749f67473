"""The output directory is bertbatch's own: a lock, only files its manifest lists are touched, no link is
ever followed; OS failures (read-only, full disk, a file where a directory should be) are messages; stdout
runs keep every row and tell where rejects went."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import csv

from bertbatch.errors import EXIT_INPUT, EXIT_OUTPUT
from hostile_helpers import cli, job_state, parts_table, release, start_held, subprocess_env, texts_table


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(texts_table(300), path)
    return path


@contextlib.contextmanager
def small_disk(path, size="1m", options=""):
    """A tmpfs of `size` at `path` (the tests run as root); skipped where mounting is not permitted."""
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# ------------------------------------------------------------------------------------------ ownership
def test_overwrite_refuses_a_directory_of_foreign_files_and_leaves_them(tmp_path, model, src):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-0001.parquet").write_text("another tool's data")
    (out / "notes.txt").write_text("mine")
    cli("score", model, src, "-o", out, "--overwrite").assert_error(EXIT_OUTPUT, "part-0001.parquet", "did not write")
    assert (out / "part-0001.parquet").read_text() == "another tool's data"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "part-0001.parquet"]


def test_overwrite_of_a_job_leaves_a_foreign_file_planted_in_it(tmp_path, model, src):
    out = tmp_path / "out"
    cli("score", model, src, "-o", out).assert_ok()
    (out / "part-99999-00000.parquet").write_text("not bertbatch's")
    cli("score", model, src, "-o", out, "--overwrite").assert_error(EXIT_OUTPUT, "part-99999-00000.parquet")
    assert (out / "part-99999-00000.parquet").read_text() == "not bertbatch's"


def test_overwrite_replaces_exactly_the_files_its_manifest_lists(tmp_path, model, src):
    out = tmp_path / "out"
    cli("score", model, src, "-o", out, "--rows-per-part", "100").assert_ok()
    cli("score", model, src, "-o", out, "--overwrite", "--rows-per-part", "200").assert_ok()
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000-00000.parquet", "part-00000-00001.parquet"]
    assert parts_table(out).num_rows == 300


def test_non_empty_foreign_directory_message_does_not_suggest_overwrite(tmp_path, model, src):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.bin").write_text("x")
    cli("score", model, src, "-o", out).assert_error(EXIT_OUTPUT, "did not write", "Choose another -o")


@pytest.mark.parametrize("name", ["_SUCCESS", "_manifest.json", "part-00000-00001.parquet", "_rejects.csv",
                                  "_bertbatch.lock"])
def test_a_link_planted_in_the_output_is_never_written_through(tmp_path, model, name):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i},great {i}\n" for i in range(250)) + "x,y,z\n")
    out = tmp_path / "out"
    cli("score", model, src, "-o", out, "--rows-per-part", "100", "--on-bad-rows", "reject").assert_ok()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / name).unlink(missing_ok=True)
    (out / name).symlink_to(victim)
    result = cli("score", model, src, "-o", out, "--rows-per-part", "100", "--on-bad-rows", "reject", "--overwrite")
    result.assert_error(EXIT_OUTPUT, name, "link")
    assert victim.read_text() == "precious"


def test_resume_through_a_planted_link_to_a_part_is_refused(tmp_path, model, src):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.parquet"
    victim.write_text("precious")
    (out / "part-00000-00000.parquet").symlink_to(victim)
    cli("score", model, src, "-o", out, "--resume").assert_error(EXIT_OUTPUT, "link")
    assert victim.read_text() == "precious"


# --------------------------------------------------------------------------------------------- lock
def _hold_lock(out):
    """Another process holding the job lock of `out` (as a running bertbatch job would)."""
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / '_bertbatch.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_job_on_a_locked_directory_is_refused_naming_the_holder(tmp_path, model, src):
    out = tmp_path / "out"
    cli("score", model, src, "-o", out, "--rows-per-part", "100").assert_ok()
    holder = _hold_lock(out)
    try:
        cli("score", model, src, "-o", out, "--overwrite").assert_error(EXIT_OUTPUT, "in use", f"PID {holder.pid}")
        cli("score", model, src, "-o", out, "--resume").assert_error(EXIT_OUTPUT, "in use")
    finally:
        holder.kill()
        holder.wait()
    assert job_state(out)["complete"] and parts_table(out).num_rows == 300


def test_a_lock_left_by_a_killed_job_does_not_block_resume(tmp_path, model, src):
    out = tmp_path / "out"
    cli("score", model, src, "-o", out).assert_ok()
    holder = _hold_lock(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    cli("score", model, src, "-o", out, "--resume").assert_ok()


def test_two_concurrent_jobs_on_one_directory_never_corrupt_it(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(3000), src)
    out = tmp_path / "out"
    args = ["score", model, src, "-o", out, "--overwrite", "--rows-per-part", "1000", "--silent"]
    # the first job is held (stopped) after committing its first part, so the two surely overlap
    first = start_held("recorded", 1, *args, log=tmp_path / "first.err")
    try:
        second = cli(*args)
    finally:
        first_code = release(first)
    second.assert_error(EXIT_OUTPUT, "in use by another bertbatch job", f"PID {first.pid}")
    assert first_code == 0, (tmp_path / "first.err").read_text()
    state = job_state(out)
    assert state["complete"] and state["rows_written"] == 3000
    assert parts_table(out)["id"].to_pylist() == texts_table(3000)["id"].to_pylist()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ OS failures
def test_output_under_a_file_is_a_message(tmp_path, model, src):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cli("score", model, src, "-o", blocker / "out.parquet").assert_error(EXIT_OUTPUT, f"{blocker} is a file, not a directory")
    cli("score", model, src, "-o", blocker / "outdir").assert_error(EXIT_OUTPUT, f"{blocker} is a file, not a directory")


def test_read_only_filesystem_is_a_message(tmp_path, model, src):
    with small_disk(tmp_path / "ro", options=",ro") as ro:
        cli("score", model, src, "-o", ro / "out.parquet").assert_error(EXIT_OUTPUT, "Read-only file system", "-o")


def test_full_disk_single_file_leaves_nothing_partial(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(40_000), src)
    with small_disk(tmp_path / "disk", "256k") as disk:
        cli("score", model, src, "-o", disk / "out.csv").assert_error(EXIT_OUTPUT, "No space left on device", "out.csv")
        assert list(disk.iterdir()) == []


def test_full_disk_in_a_job_keeps_committed_parts_and_resume_finishes(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(12_000), src)
    with small_disk(tmp_path / "disk", "300k") as disk:
        out = disk / "out"
        args = ["score", model, src, "-o", out, "--rows-per-part", "1000", "--format", "csv"]
        cli(*args).assert_error(EXIT_OUTPUT, "No space left on device")
        state = job_state(out)
        assert not state["complete"] and not (out / "_SUCCESS").exists()
        for part in state["parts"]:
            assert csv.read_csv(out / part["name"]).num_rows == part["rows"]
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        assert len(state["parts"]) >= 1
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # space freed
        cli(*args, "--resume").assert_ok()
        state = job_state(out)
        assert state["complete"] and state["rows_in"] == state["rows_written"] == 12_000
        ids = [i for p in sorted(out.glob("part-*")) for i in csv.read_csv(p, convert_options=csv.ConvertOptions(
            column_types={"id": pa.string()}))["id"].to_pylist()]
        assert ids == texts_table(12_000)["id"].to_pylist()


def test_file_size_limit_is_a_message_without_root(tmp_path, model):
    """The same failure as a full disk for users who cannot mount: RLIMIT_FSIZE makes writes fail."""
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(40_000), src)
    out = tmp_path / "out.csv"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run([sys.executable, "-m", "bertbatch", "score", str(model), str(src), "-o", str(out)],
                          env=subprocess_env(), capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert done.returncode == EXIT_OUTPUT, done.stderr
    assert "Traceback" not in done.stderr and "File too large" in done.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ------------------------------------------------------------------------------------------------ stdout
def test_stdout_parquet_is_parquet_with_every_row(tmp_path, model, src):
    result = cli("score", model, src, "-o", "-", "--format", "parquet", "--silent")
    result.assert_ok()
    table = pq.read_table(pa.BufferReader(result.stdout_bytes))
    assert table["id"].to_pylist() == texts_table(300)["id"].to_pylist()


def test_stdout_with_rejects_needs_a_rejects_file(tmp_path, model):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,great\n2,x,y\n")
    cli("score", model, src, "-o", "-", "--on-bad-rows", "reject").assert_error(EXIT_INPUT, "--rejects")


def test_stdout_rejects_go_to_the_named_file_and_the_user_is_told(tmp_path, model):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,great\n2,x,y\n3,awful\n")
    rejects = tmp_path / "rejects.csv"
    result = cli("score", model, src, "-o", "-", "--on-bad-rows", "reject", "--rejects", rejects)
    result.assert_ok()
    assert [r["raw"] for r in csv.read_csv(rejects).to_pylist()] == ["2,x,y"]
    assert str(rejects) in result.output
    assert result.stdout_bytes.decode().count("\n") == 3  # header + two rows


def test_rejects_file_never_describes_an_earlier_run(tmp_path, model):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,great\n2,x,y\n")
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject").assert_ok()
    rejects = out.with_name("o.parquet.rejects.csv")
    assert len(csv.read_csv(rejects).to_pylist()) == 1
    src.write_text("id,text\n1,great\n2,fine\n")
    result = cli("score", model, src, "-o", out, "--on-bad-rows", "reject", "--overwrite")
    result.assert_ok()
    assert csv.read_csv(rejects).num_rows == 0 and str(rejects) in result.output


def test_overwriting_a_single_file_that_is_a_link_replaces_the_link_not_its_target(tmp_path, model, src):
    victim = tmp_path / "victim.parquet"
    victim.write_text("precious")
    out = tmp_path / "o.parquet"
    out.symlink_to(victim)
    cli("score", model, src, "-o", out, "--overwrite").assert_ok()
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and pq.read_table(out).num_rows == 300
