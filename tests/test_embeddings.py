"""`--embeddings`: the vector the classification head reads, from the same pass, in every engine and format."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pyarrow import csv

from bertbatch import Scorer, score_batches, score_file
from bertbatch.cli import cli
from bertbatch.config import ScoreConfig
from bertbatch.errors import InputError
from bertbatch.job import fingerprint
from bertbatch.source import expand_inputs
from helpers import make_texts

HIDDEN = 32  # tests/conftest.py's tiny BERT


def _texts(n=60, seed=3):
    return make_texts(n, seed=seed)[0]


def _pytorch_pooled(model_dir, texts):
    """transformers' own pooled output (tanh(pooler.dense(h_CLS))), one unpadded text at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    with torch.inference_mode():
        for text in texts:
            feeds = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
            out.append(model.bert(**feeds).pooler_output[0].numpy())
    return np.stack(out)


def _vectors(rows):
    return np.stack([row["embedding"] for row in rows])


def test_fp32_embedding_equals_pytorchs_pooled_output(tiny_exported):
    texts = _texts()
    rows = Scorer(tiny_exported, graph="fp32", embeddings="pooled").predict(texts)
    got = _vectors(rows)
    assert got.dtype == np.float32 and got.shape == (len(texts), HIDDEN)
    assert np.abs(got - _pytorch_pooled(tiny_exported, texts)).max() <= 1e-4


def test_torch_runner_embedding_equals_pytorchs_pooled_output(tiny_model):
    texts = _texts(20)
    got = _vectors(Scorer(tiny_model, graph="torch", embeddings="pooled").predict(texts))
    assert np.abs(got - _pytorch_pooled(tiny_model, texts)).max() <= 1e-5


@pytest.mark.parametrize("graph, tolerance", [("int8", 0.0), ("fp32", 1e-6)])
def test_embedding_is_identical_across_batchings(tiny_exported, graph, tolerance):
    texts = _texts(80, seed=5)
    order = np.random.default_rng(0).permutation(len(texts))

    def vectors(rows_of, **budget):
        scorer = Scorer(tiny_exported, graph=graph, provider="cpu", embeddings="pooled", **budget)
        return _vectors(scorer.predict(rows_of))

    batched = vectors(texts, max_tokens=1024, max_batch_rows=32)
    single = np.stack([vectors([t], max_batch_rows=1)[0] for t in texts[:20]])
    shuffled = np.empty_like(batched)
    shuffled[order] = vectors([texts[i] for i in order], max_tokens=96, max_batch_rows=3)
    if tolerance == 0.0:  # the default CPU graph, static int8: bit for bit
        assert np.array_equal(single, batched[:20]) and np.array_equal(shuffled, batched)
    else:
        assert np.abs(single - batched[:20]).max() <= tolerance
        assert np.abs(shuffled - batched).max() <= tolerance


def test_duckdb_reads_the_embedding_as_a_fixed_size_float_array(tmp_path, tiny_exported):
    """Arrow carries the fixed size (score_batches -> DuckDB: FLOAT[H]); Parquet has no fixed-size list, so
    DuckDB reads the file's column as FLOAT[] (every row exactly H values, castable to FLOAT[H]), while pyarrow
    restores FixedSizeList from the Arrow schema the file stores."""
    duckdb = pytest.importorskip("duckdb")
    src = tmp_path / "in.parquet"
    texts = _texts(30) + [""]
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), src)
    con = duckdb.connect()
    stream = score_batches(pa.table({"id": list(range(len(texts))), "text": texts}), tiny_exported, graph="fp32",
                           embeddings="pooled")
    con.register("scored", stream)
    kinds = con.execute("SELECT DISTINCT typeof(embedding) FROM scored").fetchall()
    assert kinds == [(f"FLOAT[{HIDDEN}]",)]

    out = tmp_path / "out.parquet"
    score_file(src, out, tiny_exported, graph="fp32", embeddings="pooled")
    lengths = con.execute(f"SELECT DISTINCT len(embedding) FROM '{out}' WHERE embedding IS NOT NULL").fetchall()
    assert lengths == [(HIDDEN,)]
    cast = con.execute(f"SELECT DISTINCT typeof(embedding::FLOAT[{HIDDEN}]) FROM '{out}'").fetchall()
    assert cast == [(f"FLOAT[{HIDDEN}]",)]
    nulls = con.execute(f"SELECT id FROM '{out}' WHERE embedding IS NULL").fetchall()
    assert nulls == [(len(texts) - 1,)]  # the empty text: no vector, its error says why
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), HIDDEN)
    expected = _vectors(Scorer(tiny_exported, graph="fp32", embeddings="pooled").predict(texts[:-1]))
    assert np.array_equal(np.stack(table["embedding"].to_pylist()[:-1]).astype(np.float32), expected)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_outputs_write_the_embedding_as_a_json_array(tmp_path, tiny_exported, fmt):
    src = tmp_path / "in.parquet"
    texts = _texts(10) + [" "]
    pq.write_table(pa.table({"text": texts}), src)
    out = tmp_path / f"out.{fmt}"
    score_file(src, out, tiny_exported, graph="fp32", embeddings="pooled")
    if fmt == "jsonl":
        cells = [json.loads(line)["embedding"] for line in out.read_text().splitlines()]
    else:
        cells = [json.loads(v) if v else None for v in csv.read_csv(out)["embedding"].to_pylist()]  # null: empty
    assert cells[-1] is None
    expected = _vectors(Scorer(tiny_exported, graph="fp32", embeddings="pooled").predict(texts[:-1]))
    assert np.array_equal(np.asarray(cells[:-1], dtype=np.float32), expected)  # float32 values round-trip


def test_score_batches_carries_the_fixed_size_embedding(tiny_exported):
    texts = _texts(40)
    reader = score_batches(pa.table({"text": texts}), tiny_exported, graph="int8", embeddings="pooled", window_rows=16)
    table = reader.read_all()
    assert reader.schema.field("embedding").type == pa.list_(pa.float32(), HIDDEN)
    expected = _vectors(Scorer(tiny_exported, graph="int8", embeddings="pooled").predict(texts))
    assert np.array_equal(np.asarray(table["embedding"].to_pylist(), dtype=np.float32), expected)


def test_window_mode_embedding_is_the_mean_of_its_windows(tiny_exported):
    long_text = " ".join(["the movie was great and the food was awful"] * 40)
    scorer = Scorer(tiny_exported, graph="fp32", embeddings="pooled", long_text="window", max_length=32, stride=8)
    encoded = scorer.encode([long_text])
    assert len(encoded.owner) > 2
    tokens = encoded.tokens
    per_window = []
    for i in range(len(tokens.owner)):  # each window run on its own, unpadded
        ids = np.asarray([tokens.ids[tokens.offsets[i]:tokens.offsets[i + 1]]], dtype=np.int64)
        per_window.append(scorer.runner.run(ids, np.ones_like(ids), np.zeros_like(ids), embeddings=True)[1][0])
    row = scorer.predict([long_text])[0]
    assert row["windows"] == len(per_window)
    assert np.abs(row["embedding"] - np.mean(per_window, axis=0)).max() <= 1e-6


def test_export_records_embedding_figures_for_every_graph(tiny_exported):
    section = json.loads((tiny_exported / "bertbatch.json").read_text())["export"]
    assert section["embedding"]["size"] == HIDDEN and "pooled" in section["embedding"]["definition"]
    graphs = section["graphs"]
    assert set(graphs) == {"fp32", "int8", "int8-dynamic", "fp16"}
    assert graphs["fp32"]["parity"]["max_abs_embedding_delta"] <= 1e-4
    for key in ("int8", "int8-dynamic", "fp16"):
        assert 0.5 < graphs[key]["parity"]["embedding_cosine_min"] <= 1.0 + 1e-9
    for key in ("fp32", "int8"):
        assert graphs[key]["invariance"]["max_abs_embedding_delta"] <= 1e-6
    assert graphs["int8"]["invariance"]["bitwise"]


def _strip_embedding_output(graph):
    """The graph as exports before this feature wrote it: no `embedding` output."""
    import onnx

    model = onnx.load(str(graph))
    kept = [o for o in model.graph.output if o.name != "embedding"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    nodes = [n for n in model.graph.node if "embedding" not in n.output]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(graph))


def test_old_graph_without_the_embedding_output_exits_3(tmp_path, tiny_exported):
    model = tmp_path / "old"
    shutil.copytree(tiny_exported, model)
    _strip_embedding_output(model / "onnx" / "model_int8.onnx")
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": _texts(5)}), src)
    out = tmp_path / "out.parquet"
    plain = CliRunner().invoke(cli, ["score", str(model), str(src), "-o", str(out), "--graph", "int8"])
    assert plain.exit_code == 0, plain.output  # the old graph still scores without --embeddings
    result = CliRunner().invoke(cli, ["score", str(model), str(src), "-o", str(tmp_path / "o2.parquet"),
                                      "--graph", "int8", "--embeddings"])
    assert result.exit_code == 3, result.output
    assert "re-export with `bertbatch export" in result.output and "Traceback" not in result.output


def test_embeddings_mean_is_refused_with_a_reason(tmp_path, tiny_exported):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": _texts(3)}), src)
    result = CliRunner().invoke(cli, ["score", str(tiny_exported), str(src), "-o", str(tmp_path / "o.parquet"),
                                      "--embeddings", "mean"])
    assert result.exit_code == 1, result.output
    assert "first token only" in result.output
    with pytest.raises(InputError):
        ScoreConfig(embeddings="mean")


def test_cli_embeddings_flag_adds_the_column(tmp_path, tiny_exported):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": _texts(5)}), src)
    out = tmp_path / "o.parquet"
    result = CliRunner().invoke(cli, ["score", str(tiny_exported), str(src), "-o", str(out), "--embeddings"])
    assert result.exit_code == 0, result.output
    assert pq.read_schema(out).field("embedding").type == pa.list_(pa.float32(), HIDDEN)


def test_resume_fingerprint_includes_the_embeddings_option(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text\nhello\n")
    args = (expand_inputs([str(src)], {}), {"graph.onnx": "0" * 64}, "int8", "CPUExecutionProvider")
    without = fingerprint(*args, ScoreConfig(), "parquet", 128)
    with_vectors = fingerprint(*args, ScoreConfig(embeddings="pooled"), "parquet", 128)
    assert without != with_vectors


def test_model_types_without_a_checked_head_are_refused():
    from bertbatch.embedding import embedding_size
    from bertbatch.errors import ModelError

    assert embedding_size({"model_type": "bert", "hidden_size": 384}) == 384
    with pytest.raises(ModelError, match="distilbert"):
        embedding_size({"model_type": "distilbert", "hidden_size": 768})
