"""Exit codes and messages: each failure class has its documented code and a one-line message, never a
traceback (README, 'Exit codes')."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from bertbatch.errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_MODEL, EXIT_USAGE
from hostile_helpers import cli, texts_table


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(texts_table(20), path)
    return path


def test_usage_error_exits_2(tmp_path, model, src):
    result = cli("score", model, src, "-o", tmp_path / "o.parquet", "--on-bad-rows", "maybe")
    assert result.code == EXIT_USAGE and "Traceback" not in result.output


def test_model_directory_without_config_exits_3(tmp_path, src):
    empty = tmp_path / "model"
    empty.mkdir()
    cli("score", empty, src, "-o", tmp_path / "o.parquet").assert_error(EXIT_MODEL, "config.json is missing")


def test_truncated_onnx_graph_is_a_model_message(tmp_path, model, src):
    m = tmp_path / "m"
    shutil.copytree(model, m)
    graph = m / "onnx" / "model_int8.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    out = tmp_path / "o.parquet"
    cli("score", m, src, "-o", out, "--graph", "int8").assert_error(EXIT_MODEL, "model_int8.onnx", "export")
    assert not out.exists()


def test_missing_graph_file_exits_3(tmp_path, model, src):
    m = tmp_path / "m"
    shutil.copytree(model, m)
    (m / "onnx" / "model_fp16.onnx").unlink()
    cli("score", m, src, "-o", tmp_path / "o.parquet", "--graph", "fp16").assert_error(EXIT_MODEL, "does not exist")


def test_unexpected_exception_is_one_line_with_exit_70(tmp_path, model, src, monkeypatch):
    from bertbatch import pipeline

    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(pipeline, "score_file", boom)
    cli("score", model, src, "-o", tmp_path / "o.parquet").assert_error(EXIT_BUG, "ZeroDivisionError", "bug", "-v")


def test_interrupt_exits_130_without_a_traceback(tmp_path, model, src, monkeypatch):
    from bertbatch import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "score_file", interrupted)
    result = cli("score", model, src, "-o", tmp_path / "o.parquet")
    assert result.code == EXIT_INTERRUPTED and "Traceback" not in result.output and "Interrupted" in result.output


def test_exit_codes_are_documented_in_the_readme():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Exit codes"):]
    for code in ("| 0 ", "| 1 ", "| 2 ", "| 3 ", "| 4 ", "| 5 ", "| 70 ", "| 130 ", "| 141 "):
        assert code in section, code


def test_export_prints_no_tracer_warning(tmp_path, tiny_model):
    import warnings

    m = tmp_path / "m"
    shutil.copytree(tiny_model, m)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli("export", m, "--quantize", "none").assert_ok()
    assert [str(w.message)[:80] for w in caught if w.category.__name__ == "TracerWarning"] == []
