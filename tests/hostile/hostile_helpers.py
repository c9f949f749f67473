"""Helpers for the hostile suite (imported by name; its fixtures are in tests/hostile/conftest.py): drive the
CLI as a user would, and kill it at named points of a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

import bertbatch

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = Path(bertbatch.__file__).resolve().parent.parent  # the bertbatch this test run imports


def cli(*args) -> "CliResult":
    """`bertbatch ARGS` in-process; returns exit code and everything printed (stdout and stderr)."""
    from bertbatch.cli import cli as command

    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=True)
    return CliResult(result.exit_code, result.output, result.stdout_bytes, result.exception)


class CliResult:
    def __init__(self, code, output, stdout_bytes, exception):
        self.code, self.output, self.stdout_bytes, self.exception = code, output, stdout_bytes, exception

    def assert_error(self, code: int, *fragments: str) -> None:
        """A one-line `Error: ...` message with these fragments, exit `code`, and no traceback."""
        assert self.code == code, (self.code, self.output, self.exception)
        assert "Traceback" not in self.output, self.output
        errors = [line for line in self.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, self.output
        for fragment in fragments:
            assert fragment in errors[0], (fragment, errors[0])

    def assert_ok(self) -> None:
        assert self.code == 0, (self.output, self.exception)


def subprocess_env() -> dict:
    """The environment of a `bertbatch` subprocess: offline, importing the same bertbatch as this test run."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), *sys.path])}


def run_killed(point: str, nth: int, *args, timeout=180) -> subprocess.CompletedProcess:
    """`bertbatch ARGS` in a subprocess that SIGKILLs itself at the job's commit point `point`, call `nth`."""
    return subprocess.run([sys.executable, str(HERE / "killer.py"), point, str(nth), *map(str, args)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def start_held(point: str, nth: int, *args, log: Path, timeout=180) -> subprocess.Popen:
    """`bertbatch ARGS` in a subprocess that stops itself (SIGSTOP) at commit point `point`, call `nth`; returns
    once it is stopped there, holding whatever it holds at that point. `release` lets it go on."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(HERE / "killer.py"), point, str(nth), *map(str, args)],
                                env={**subprocess_env(), "KILLER_SIGNAL": "SIGSTOP"},
                                stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + timeout
    while _process_state(proc.pid) != "T":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the job never stopped at {point} #{nth} (exit {proc.wait()}): {log.read_text()}")
        time.sleep(0.05)
    return proc


def release(proc: subprocess.Popen, timeout=300) -> int:
    """Let a job stopped by `start_held` go on; its exit code."""
    proc.send_signal(signal.SIGCONT)
    return proc.wait(timeout=timeout)


def _process_state(pid: int) -> str:
    """R, S, T (stopped), Z... from /proc/PID/stat (the field after the command name in parentheses)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def parts_table(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def job_state(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())["state"]


def texts_table(n: int, prefix: str = "") -> pa.Table:
    words = ["great", "awful", "the", "movie", "was", "trip", "food", "love"]
    return pa.table({"id": [f"{prefix}{i:06d}" for i in range(n)],
                     "text": [" ".join(words[(i * 7 + j) % 8] for j in range(1 + i % 9)) for i in range(n)]})
