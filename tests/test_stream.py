"""`score_batches`: a query engine's Arrow stream in, labeled batches out, no file in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from bertbatch import Scorer, score_batches
from bertbatch.errors import InputError
from helpers import make_texts

duckdb = pytest.importorskip("duckdb")


def _table(n: int) -> pa.Table:
    texts, _ = make_texts(n, seed=3)
    return pa.table({"id": pa.array(range(n), pa.int64()), "text": texts, "lang": ["en"] * n})


def test_duckdb_query_to_score_batches_to_duckdb_query_keeps_rows_and_order(tiny_exported):
    con = duckdb.connect()
    con.register("reviews", _table(500))
    query = con.sql("select id, text from reviews where id % 5 <> 0 order by id desc")  # 400 rows, a real query

    scored = score_batches(query, tiny_exported, window_rows=64, graph="fp32")
    reader = con.cursor()  # a connection runs one query at a time: the stream is read by one, queried by another
    reader.register("scored", scored)
    back = reader.sql("select id, text, label, score from scored").fetch_arrow_table()

    expected_ids = [i for i in range(499, -1, -1) if i % 5]
    assert back["id"].to_pylist() == expected_ids
    texts = back["text"].to_pylist()
    reference = Scorer(tiny_exported, graph="fp32").predict(texts)
    assert back["label"].to_pylist() == [r["label"] for r in reference]
    np.testing.assert_allclose(back["score"].to_numpy(), [r["score"] for r in reference], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["polars", "dataset", "reader", "table"])
def test_score_batches_takes_any_arrow_stream_source(tiny_exported, tmp_path, kind):
    table = _table(120)
    if kind == "polars":
        pl = pytest.importorskip("polars")
        source = pl.from_arrow(table)
    elif kind == "dataset":
        ds.write_dataset(table, tmp_path / "d", format="parquet", max_rows_per_group=50, max_rows_per_file=50)
        source = ds.dataset(tmp_path / "d", format="parquet")
    elif kind == "reader":
        source = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=7))
    else:
        source = table
    out = score_batches(source, tiny_exported, keep=("id",), window_rows=32, graph="fp32").read_all()
    assert out.column_names == ["id", "label", "score", "truncated", "error"]
    assert sorted(out["id"].to_pylist()) == list(range(120))  # a multi-file dataset may come in file order
    labels = [r["label"] for r in Scorer(tiny_exported, graph="fp32").predict(table["text"].to_pylist())]
    assert out["label"].to_pylist() == [labels[i] for i in out["id"].to_pylist()]


def test_score_batches_refuses_a_source_without_the_text_column_before_reading(tiny_exported):
    with pytest.raises(InputError, match=r"Column 'body' not found in the source stream; columns are \['id', 'text', 'lang'\]"):
        score_batches(_table(3), tiny_exported, text_column="body")
    with pytest.raises(InputError, match="reads Arrow streams; got a builtins.list"):
        score_batches([{"text": "x"}], tiny_exported)


_MEASURE = """
import json, sys
import duckdb
from bertbatch import score_batches
rows = int(sys.argv[2])
con = duckdb.connect()
con.execute("set enable_progress_bar = false")
query = con.sql(f"select i as id, 'row ' || i || ' great' as text, repeat('x', 1000) as payload from range({rows}) t(i)")
scored = score_batches(query.to_arrow_reader(batch_size=2048), sys.argv[1], window_rows=2048)
cursor = con.cursor()
cursor.register("scored", scored)
count, last, labeled, payload = cursor.sql(
    "select count(*), max(id), count(label), sum(length(payload)) from scored").fetchall()[0]
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"rows": count, "last": last, "labeled": labeled, "payload": payload, "peak_rss_mb": hwm / 1024}))
"""


def _peak(model, rows: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(model), str(rows)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS read from /proc (Linux)")
def test_score_batches_peak_memory_is_flat_for_10x_the_rows(tiny_exported):
    """DuckDB query -> score_batches -> DuckDB aggregate, a fresh process per size. Each row carries a 1 kB
    pass-through column, so holding the 100k rows would cost 100 MB; streaming holds a few windows."""
    small, large = _peak(tiny_exported, 10_000), _peak(tiny_exported, 100_000)
    assert (small["rows"], small["labeled"], small["last"], small["payload"]) == (10_000, 10_000, 9_999, 10_000_000)
    assert (large["rows"], large["labeled"], large["last"], large["payload"]) == (100_000, 100_000, 99_999, 100_000_000)
    assert large["peak_rss_mb"] < small["peak_rss_mb"] + 40, (small, large)
