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


def _option(command: str, name: str):
    return next(p for p in cli.commands[command].params if p.name == name)


def test_score_and_eval_share_the_max_tokens_default_the_provider_budget(tmp_path):
    # None: the tune record, else the provider's default budget (1024 tokens on CPU), for both commands
    (tmp_path / "data.csv").write_text("text,label\nok,pos\n")
    args = {"score": [str(tmp_path), str(tmp_path / "data.csv"), "-o", str(tmp_path / "o.csv")],
            "eval": [str(tmp_path), str(tmp_path / "data.csv")]}
    for command, argv in args.items():
        ctx = cli.commands[command].make_context(command, argv)
        assert ctx.params["max_tokens"] is None, (command, ctx.params["max_tokens"])


def test_each_shared_option_has_one_help_text_everywhere():
    for name in ("provider", "text_column", "max_tokens"):
        helps = {_option(c, name).help for c in cli.commands if any(p.name == name for p in cli.commands[c].params)}
        assert len(helps) == 1, (name, helps)


def test_an_unknown_tokenizer_backend_is_refused_not_silently_the_slow_path():
    import pytest

    from bertbatch.config import ScoreConfig
    from bertbatch.errors import InputError

    with pytest.raises(InputError, match="--tokenizer-backend must be auto or tokenizers; got 'nanotokn'"):
        ScoreConfig(tokenizer_backend="nanotokn")


def test_score_quiet_prints_nothing_and_silent_is_its_old_spelling(tmp_path, tiny_exported):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["great love", "awful"]}), src)
    for i, flag in enumerate(["-q", "--quiet", "--silent"]):
        out = tmp_path / f"out{i}.parquet"
        result = CliRunner().invoke(cli, ["score", str(tiny_exported), str(src), "-o", str(out), flag])
        assert result.exit_code == 0, result.output
        assert result.output == "" and pq.read_table(out).num_rows == 2
    assert "--silent" not in CliRunner().invoke(cli, ["score", "--help"]).output


def test_scoring_a_graph_without_external_data_never_imports_onnx(tmp_path, tiny_exported):
    # the external-data check reads the graph's bytes; the onnx package (~1 s to import and parse) is not needed
    code = ("import sys, bertbatch\n"
            f"bertbatch.Scorer({str(tiny_exported)!r}, graph='int8').predict(['ok'])\n"
            "assert 'onnx' not in sys.modules, 'scoring imported onnx'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
