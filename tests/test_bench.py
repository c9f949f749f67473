"""Benchmark: one sane record per graph x batch x length, context recorded, plot written, real-data mode."""

from __future__ import annotations

import itertools
import json

import pytest
from click.testing import CliRunner

from bertbatch.bench import benchmark
from bertbatch.cli import cli
from bertbatch.errors import EXIT_USAGE, InputError, ModelError
from helpers import make_texts, write_parquet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTEXT = ("model", "graph", "graph_file", "provider", "threads", "mode", "runs", "warmup", "cpu_model", "cpu_cores",
           "available_cpus", "versions", "timestamp", "baseline_graph", "speedup")


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_sane(record):
    assert 0 < record["p50_ms"] <= record["p95_ms"] <= record["p99_ms"]
    assert record["rows_per_s"] > 0
    assert record["tokens_per_s"] > 0
    assert 0 < record["padding_ratio"] <= 1
    for field in CONTEXT:
        assert record[field] is not None, field


def test_bench_cli_one_record_per_graph_batch_and_length(tiny_exported, tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(cli, ["bench", str(tiny_exported), "--runs", "3", "--warmup", "1", "--batch-sizes", "1,4",
                                      "--seq-lengths", "16,32", "--threads", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = _records(out / "results.jsonl")
    # fp16 is a GPU graph: left out on CPU unless asked for
    expected = set(itertools.product(["fp32", "int8"], [1, 4], [16, 32]))
    assert {(r["graph"], r["batch_size"], r["seq_length"]) for r in records} == expected
    assert len(records) == len(expected)
    for r in records:
        _assert_sane(r)
        assert (r["mode"], r["provider"], r["threads"], r["timed_batches"]) == ("synthetic", "CPUExecutionProvider", 1, 3)
        assert r["mean_padded_length"] == r["seq_length"]
        assert r["padding_ratio"] == 1.0  # full attention mask
        assert r["versions"]["bertbatch"]
        assert r["available_cpus"] <= r["cpu_cores"]
    assert {r["speedup"] for r in records if r["graph"] == "fp32"} == {1.0}
    assert (out / "latency.png").read_bytes()[:8] == PNG_MAGIC
    assert "| int8 | 4 | 32 |" in result.output
    assert (out / "summary.md").read_text() in result.output


def test_bench_real_texts_time_every_batch(tiny_exported, tmp_path):
    texts, _ = make_texts(9, seed=21)
    data = write_parquet(tmp_path / "texts.parquet", body=texts + ["", None])  # blanks are skipped
    out = tmp_path / "bench"
    result = CliRunner().invoke(cli, ["bench", str(tiny_exported), "--graph", "int8", "--data", str(data),
                                      "--text-column", "body", "--batch-sizes", "1,4", "--runs", "2", "--warmup", "1",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = _records(out / "results.jsonl")
    assert [(r["graph"], r["batch_size"], r["seq_length"]) for r in records] == [("int8", 1, None), ("int8", 4, None)]
    # at least one pass over the data: 9 batches of 1 row, 3 batches of at most 4 rows
    assert [r["timed_batches"] for r in records] == [9, 3]
    from bertbatch.modeldir import ModelDir

    lengths = [len(e.ids) for e in ModelDir.open(tiny_exported).tokenizer().encode_batch(texts)]
    for r in records:
        _assert_sane(r)
        assert r["mode"] == "data"
        assert r["data"] == str(data)
    # on CPU each batch is padded to its own longest row, no rounding: one row per batch means no padding
    one, four = records
    assert one["mean_padded_length"] == pytest.approx(sum(lengths) / len(lengths), abs=0.01)
    assert one["padding_ratio"] == 1.0
    assert sum(lengths) / len(lengths) <= four["mean_padded_length"] <= max(lengths)
    assert (out / "latency.png").read_bytes()[:8] == PNG_MAGIC
    assert "~" in result.output  # length column: mean padded length


def test_bench_torch_baseline_without_onnx(tiny_model):
    records = benchmark(tiny_model, graphs=["torch"], batch_sizes=(2,), seq_lengths=(16,), runs=2, warmup=0)
    assert [(r["graph"], r["provider"], r["batch_size"], r["seq_length"]) for r in records] == [("torch", "torch-cpu", 2, 16)]
    _assert_sane(records[0])


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--seq-lengths", "16,1024"], InputError.exit_code, "exceed the model's 512 position embeddings"),
        (["--batch-sizes", "1,x"], EXIT_USAGE, "expected comma-separated integers"),
        (["--batch-sizes", "0"], InputError.exit_code, "--batch-sizes must be positive integers"),
        (["--runs", "0"], InputError.exit_code, "--runs must be at least 1"),
        (["--graph", "int4"], ModelError.exit_code, "--graph must be fp32, int8"),
    ],
)
def test_bench_cli_errors(tiny_exported, args, code, message):
    result = CliRunner().invoke(cli, ["bench", str(tiny_exported), "--runs", "1", *args])
    assert result.exit_code == code
    assert message in result.output


def test_bench_without_graphs_says_to_export(tiny_model):
    result = CliRunner().invoke(cli, ["bench", str(tiny_model)])
    assert result.exit_code == ModelError.exit_code  # a model problem (README, "Exit codes")
    assert "Run `bertbatch export" in result.output
    assert "--graph torch" in result.output


def test_bench_config_refuses_bad_settings_before_loading_a_model():
    from bertbatch.config import BenchConfig
    from bertbatch.errors import InputError

    with pytest.raises(InputError, match="--batch-sizes must be positive integers"):
        BenchConfig(batch_sizes=(0, 8))
    with pytest.raises(InputError, match="--runs must be at least 1"):
        BenchConfig(runs=0)
    with pytest.raises(InputError, match="--provider must be"):
        BenchConfig(provider="tpu")
