"""The CLI as users meet it: documented commands, the installed entry point, errors, no torch when scoring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from bertbatch.cli import cli
from bertbatch.errors import InputError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_command_is_documented_in_the_readme():
    import re

    documented = set(re.findall(r"^\| `(\w+)[ `]", README.read_text(), re.MULTILINE))
    for name in cli.commands:
        assert name in documented, f"command {name} is not in README.md's command table"


def test_installed_entry_point_runs():
    exe = Path(sys.executable).parent / "bertbatch"
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("bertbatch, version")


def test_score_cli_prints_a_summary_and_writes_the_file(tmp_path, tiny_exported):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["great love", "awful"]}), src)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["score", str(tiny_exported), str(src), "-o", str(out), "--probs"])
    assert result.exit_code == 0, result.output
    assert "2 rows in, 2 written" in result.output and "CPUExecutionProvider (int8" in result.output
    # which graph/budget/threads and why (no tune record for this machine: the safe defaults)
    assert "settings: safe defaults (no tune record for this machine" in result.output
    assert out.read_text().splitlines()[0] == '"id","text","label","score","prob_neg","prob_pos","truncated","error"'


def test_cli_errors_are_one_line_messages_with_exit_1(tmp_path, tiny_exported):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"body": ["x"]}), src)
    result = CliRunner().invoke(cli, ["score", str(tiny_exported), str(src), "-o", str(tmp_path / "o.parquet")])
    assert result.exit_code == InputError.exit_code
    assert "Error: Column 'text' not found" in result.output and "Traceback" not in result.output


def test_scoring_never_imports_torch(tmp_path, tiny_exported):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["great love"]}), src)
    code = (
        "import sys, bertbatch\n"
        f"bertbatch.score_file({str(src)!r}, {str(tmp_path / 'o.parquet')!r}, {str(tiny_exported)!r})\n"
        "bertbatch.Scorer(" + repr(str(tiny_exported)) + ").predict(['ok'])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'scoring imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_closed_stdout_ends_quietly_without_aborting_worker_threads(tmp_path, tiny_exported):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"great movie number {i}" for i in range(20_000)]}), src)
    exe = Path(sys.executable).parent / "bertbatch"
    proc = subprocess.Popen([str(exe), "score", str(tiny_exported), str(src), "-o", "-", "--silent"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b'"text"')
    proc.stdout.close()  # the reader leaves, like `| head -1`
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 141, stderr.decode()
    assert b"terminate called" not in stderr and b"Traceback" not in stderr
