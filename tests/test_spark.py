"""Spark engine: the same labels as `bertbatch score`, row for row, from a real local-mode Spark session."""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

pytest.importorskip("pyspark")
pytest.importorskip("pandas")  # pyspark's mapInArrow refuses to run without it
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime (java on PATH or JAVA_HOME)", allow_module_level=True)

from helpers import make_texts

from bertbatch import ScoreConfig, score_file
from bertbatch import spark as bspark
from bertbatch.errors import EXIT_MODEL
from bertbatch.gates import PROB_TOLERANCE
from bertbatch.cli import cli
from bertbatch.errors import InputError, MissingDependency, ModelError
from bertbatch.runtime import CPU, CUDA
from bertbatch.summary import KEYS

ODD_TEXTS = [None, "", "   ", "NA", 'a "quoted"\nnew line', "ünïcödé ✓ 表 great"]


@pytest.fixture(scope="session")
def spark_session(tmp_path_factory):
    """One local[2] session for the module: this interpreter on the workers, scratch space under tmp."""
    from pyspark.sql import SparkSession

    scratch = tmp_path_factory.mktemp("spark")
    # SparkContext starts local workers with $PYSPARK_PYTHON (default: `python3` on PATH, which in CI is not the
    # venv's interpreter); the spark.pyspark.python conf alone is not read in local mode.
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("bertbatch-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .config("spark.local.dir", str(scratch / "local"))
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if previous is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = previous


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    """200 sentiment rows plus null/empty/blank/odd texts, with string IDs (leading zeros kept)."""
    texts, _ = make_texts(200, seed=7)
    texts = texts + ODD_TEXTS
    ids = [f"{i:05d}" for i in range(len(texts))]
    path = tmp_path_factory.mktemp("spark-data") / "rows.parquet"
    pq.write_table(pa.table({"id": ids, "text": pa.array(texts, pa.string()), "n": list(range(len(texts)))}), path)
    return path


def _by_id(rows) -> dict:
    return {row["id"]: row for row in rows}


def _assert_same_rows(local: list[dict], spark: list[dict], columns: list[str]) -> None:
    local, spark = _by_id(local), _by_id(spark)
    assert spark.keys() == local.keys()
    for key, want in local.items():
        got = spark[key]
        for column in columns:
            if isinstance(want[column], float):
                assert got[column] == pytest.approx(want[column], rel=0, abs=PROB_TOLERANCE), (key, column)
            else:
                assert got[column] == want[column], (key, column)


def test_spark_labels_equal_local_scorer_row_for_row(spark_session, tiny_exported, table_path, tmp_path):
    local_out = tmp_path / "local.parquet"
    score_file(table_path, local_out, tiny_exported, graph="fp32", probs=True)
    local = pq.read_table(local_out)

    df = spark_session.read.parquet(str(table_path)).repartition(3)
    scored = bspark.score(df, tiny_exported, config=ScoreConfig(graph="fp32", probs=True))
    assert scored.rdd.getNumPartitions() == 3
    assert scored.columns == local.column_names  # kept columns, then label, score, prob_*, truncated, error
    rows = [row.asDict() for row in scored.collect()]

    assert len(rows) == local.num_rows
    _assert_same_rows(local.to_pylist(), rows, ["text", "n", "label", "score", "prob_neg", "prob_pos",
                                                 "truncated", "error"])
    errors = {row["text"]: row["error"] for row in rows if row["error"]}
    assert errors == {None: "null text", "": "empty text", "   ": "empty text"}
    assert sum(row["label"] is None for row in rows) == 3


def test_keep_subset_and_text_col_argument(spark_session, tiny_exported, table_path):
    df = spark_session.read.parquet(str(table_path)).withColumnRenamed("text", "body")
    scored = bspark.score(df, tiny_exported, text_col="body", keep=("id",), top_k=2, logits=True)
    assert scored.columns == ["id", "label", "score", "top_k", "logits", "truncated", "error"]
    row = scored.where("id = '00000'").collect()[0]
    assert row["top_k"][0]["label"] == row["label"]
    assert len(row["logits"]) == 2


def test_shipped_model_gives_the_same_labels(spark_session, tiny_exported, table_path, tmp_path):
    model = tmp_path / "model"  # a copy under its own name: the archive this test stages is its own
    shutil.copytree(tiny_exported, model)
    manifest = json.loads((model / "bertbatch.json").read_text())
    (model / "bertbatch.json").write_text(json.dumps({**manifest, "name": "shipped-by-this-test"}))
    df = spark_session.read.parquet(str(table_path)).repartition(3)
    shared = _by_id(r.asDict() for r in bspark.score(df, tiny_exported, graph="fp32").collect())
    before = set(bspark._STAGED)
    shipped = _by_id(r.asDict() for r in bspark.score(df, model, graph="fp32", ship_model=True).collect())
    (name,) = set(bspark._STAGED) - before  # one archive: any cluster manager
    assert "shipped-by-this-test" in name
    assert {k: r["label"] for k, r in shipped.items()} == {k: r["label"] for k, r in shared.items()}
    staged = zipfile.ZipFile(bspark._STAGED[name]).namelist()
    assert "onnx/model.onnx" in staged and "tokenizer.json" in staged
    assert "model.safetensors" not in staged  # training weights stay behind
    assert "onnx/model_int8.onnx" not in staged  # only the graphs that may run travel


def test_executor_refuses_a_model_that_differs_from_the_drivers(spark_session, tiny_exported, table_path, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_exported, model)
    scored = bspark.score(spark_session.read.parquet(str(table_path)), model)  # lazy: the driver hashed the files
    (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text() + "\n")
    with pytest.raises(Exception, match="differs between the driver and executor") as failure:
        scored.collect()
    translated = bspark._translate(failure.value, "out")
    assert isinstance(translated, ModelError)
    assert translated.args[0].startswith("Model file tokenizer.json differs")


def test_cli_engine_spark_writes_parquet_like_the_local_engine(spark_session, tiny_exported, tmp_path):
    texts, _ = make_texts(60, seed=11)
    texts += ["", 'a "quoted"\nnew line', "NA"]
    ids = [f"{i:05d}" for i in range(len(texts))]
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f'{i},"{t.replace(chr(34), chr(34) * 2)}"\n' for i, t in zip(ids, texts)),
                   encoding="utf-8")
    src.write_text(src.read_text(encoding="utf-8") + "99999,\n", encoding="utf-8")  # an unquoted empty field
    local_out = tmp_path / "local.parquet"
    score_file(src, local_out, tiny_exported, graph="fp32", probs=True)
    out = tmp_path / "spark_out"

    result = CliRunner().invoke(cli, ["score", str(tiny_exported), str(src), "-o", str(out), "--engine", "spark",
                                      "--master", "local[2]", "--graph", "fp32", "--probs"])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["engine"] == "spark"
    assert list(summary)[:len(KEYS)] == list(KEYS)  # the local engine's summary shape, then Spark's own keys
    assert summary["provider"] == CPU and summary["graph"] == "fp32" and summary["threads"] == 1
    assert summary["rows_in"] == summary["rows_written"] == len(texts) + 1
    assert summary["rows_with_error"] == 2
    assert summary["providers"] == {"CPUExecutionProvider fp32 threads=1": len(texts) + 1}
    assert (out / "_SUCCESS").exists()
    written = pq.read_table(out)
    local = pq.read_table(local_out)
    assert written.column_names == local.column_names
    assert written.schema.field("score").type == pa.float32()
    _assert_same_rows(local.to_pylist(), written.to_pylist(), ["text", "label", "score", "prob_pos", "error", "truncated"])
    rows = _by_id(written.to_pylist())
    assert rows["99999"]["text"] == "" and rows["99999"]["error"] == "empty text"


def test_score_files_refuses_what_spark_cannot_do(tiny_exported, table_path, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(InputError, match="exists. Pass --overwrite"):
        bspark.score_files([table_path], taken, tiny_exported)
    with pytest.raises(InputError, match="Parquet only"):
        bspark.score_files([table_path], tmp_path / "out.csv", tiny_exported)
    with pytest.raises(InputError, match="on-bad-rows reject"):
        bspark.score_files([table_path], tmp_path / "out", tiny_exported, on_bad_rows="reject")
    with pytest.raises(InputError, match="would overwrite the input"):
        bspark.score_files([table_path], table_path.parent, tiny_exported, overwrite=True)


def test_ragged_csv_row_fails_with_the_file_named(spark_session, tiny_exported, tmp_path):
    src = tmp_path / "ragged.csv"
    src.write_text("id,text\n1,great day\n2\n")
    with pytest.raises(InputError, match=r"ragged.csv: a row does not have the header's columns \('2'\)"):
        bspark.score_files([src], tmp_path / "out", tiny_exported)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_missing_text_column_is_named(spark_session, tiny_exported, table_path):
    df = spark_session.read.parquet(str(table_path))
    with pytest.raises(InputError, match=r"Column 'body' not found in the DataFrame; columns are \['id', 'text', 'n'\]"):
        bspark.score(df, tiny_exported, text_col="body")
    with pytest.raises(InputError, match="text must be strings"):
        bspark.score(df, tiny_exported, text_col="n")


def test_input_column_named_like_an_output_column_is_refused(spark_session, tiny_exported):
    df = spark_session.createDataFrame([("1", "good", "pos")], ["id", "text", "label"])
    with pytest.raises(InputError, match=r"Input column\(s\) \['label'\] .* --keep id,text"):
        bspark.score(df, tiny_exported)
    assert bspark.score(df, tiny_exported, keep=("id", "text")).count() == 1


def test_without_pyspark_the_error_names_the_extra(monkeypatch, tiny_exported):
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(MissingDependency, match=r"bertbatch\[spark\]"):
        bspark.score(object(), tiny_exported)


class _Gpu:
    def __init__(self, *addresses):
        self.addresses = list(addresses)


class _Task:
    def __init__(self, resources=None, cpus=1):
        self._resources, self._cpus = resources or {}, cpus

    def resources(self):
        return self._resources

    def cpus(self):
        return self._cpus


def test_task_provider_takes_cuda_only_with_a_gpu_resource(monkeypatch):
    monkeypatch.setattr(bspark, "available_providers", lambda: [CUDA, CPU])
    assert bspark.task_provider("auto", _Task({"gpu": _Gpu("1")})) == (CUDA, 1)
    assert bspark.task_provider("auto", _Task()) == (CPU, None)
    assert bspark.task_provider("cpu", _Task({"gpu": _Gpu("0")})) == (CPU, None)
    monkeypatch.setattr(bspark, "available_providers", lambda: [CPU])
    assert bspark.task_provider("auto", _Task({"gpu": _Gpu("0")})) == (CPU, None)
    assert bspark.task_cpus(_Task(cpus=4)) == 4
    assert bspark.task_cpus(None) == 1


def test_workers_without_bertbatch_fail_once_with_the_python_named(tiny_exported, table_path, tmp_path):
    """The CLI's --spark-conf spark.pyspark.python points the workers at a bare venv: one line, no Java stack."""
    import subprocess

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = bare / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_PYTHON"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(bspark.__file__).parents[1]), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-m", "bertbatch", "score", str(tiny_exported), str(table_path), "-o",
                          str(tmp_path / "out"), "--engine", "spark", "--master", "local[1]",
                          "--spark-conf", f"spark.pyspark.python={python}", "--spark-conf", "spark.ui.enabled=false"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)

    assert run.returncode == EXIT_MODEL  # a deployment that cannot score: the model/runtime class of errors
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Spark's Python workers on ")
    assert f"run {python} (Python" in last and "cannot import bertbatch" in last
    assert "spark.pyspark.python" in last  # says how to point the workers at a Python that has it
    assert "Py4J" not in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_hive_partitioned_input_keeps_its_partition_columns_like_the_local_engine(spark_session, tiny_exported, tmp_path):
    """dt=/region= directories: Spark's output has the same partition columns (typed as asked) as the local one."""
    texts, _ = make_texts(40, seed=5)
    root = tmp_path / "table"
    for n, (dt, region) in enumerate([("2024-01-01", "eu"), ("2024-01-02", "us")]):
        part = root / f"dt={dt}" / f"region={region}"
        part.mkdir(parents=True)
        rows = texts[n * 20:(n + 1) * 20]
        pq.write_table(pa.table({"id": [f"{n}-{i}" for i in range(len(rows))], "text": rows}), part / "part.parquet")
    local_out = tmp_path / "local"
    score_file(root, local_out, tiny_exported, graph="fp32", partition_types=("dt:date32",))

    bspark.score_files(root, tmp_path / "spark_out", tiny_exported, ScoreConfig(graph="fp32", partition_types=("dt:date32",)))

    local = pq.read_table(local_out).to_pylist()
    written = pq.read_table(tmp_path / "spark_out")
    assert written.schema.field("dt").type == pa.date32() and written.schema.field("region").type == pa.string()
    assert sorted((r["id"], r["dt"], r["region"], r["label"]) for r in written.to_pylist()) == \
        sorted((r["id"], r["dt"], r["region"], r["label"]) for r in local)



def test_spark_embeddings_equal_the_local_scorers(spark_session, tiny_exported, table_path, tmp_path):
    from pyspark.sql.types import ArrayType, FloatType

    local_out = tmp_path / "local.parquet"
    score_file(table_path, local_out, tiny_exported, graph="int8", embeddings="pooled")
    local = {row["id"]: row["embedding"] for row in pq.read_table(local_out).to_pylist()}
    df = spark_session.read.parquet(str(table_path)).repartition(3)
    scored = bspark.score(df, tiny_exported, config=ScoreConfig(graph="int8", embeddings="pooled"))
    assert scored.schema["embedding"].dataType == ArrayType(FloatType(), True)
    rows = {row["id"]: row["embedding"] for row in scored.select("id", "embedding").collect()}
    assert rows == local  # same float32 values, nulls for the null/empty/blank texts
    assert sum(v is None for v in rows.values()) == 3


def test_executors_read_long_texts_as_the_model_directory_records(spark_session, tiny_exported, tmp_path):
    """A model whose bertbatch.json records head+tail: Spark's executors cut long texts that way without a flag."""
    from bertbatch import Scorer
    from bertbatch.manifest import update_manifest

    model = tmp_path / "ht"
    shutil.copytree(tiny_exported, model)
    update_manifest(model, truncation={"strategy": "head+tail", "head_tokens": 40})
    texts, _ = make_texts(40, seed=11)
    texts = [" ".join([t] * 50) + f" {i} the end" for i, t in enumerate(texts)]  # 150+ words: past 128 tokens
    ids = [f"{i:03d}" for i in range(len(texts))]
    path = tmp_path / "long.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts}), path)

    scored = bspark.score(spark_session.read.parquet(str(path)), model, config=ScoreConfig(graph="fp32"))
    rows = [row.asDict() for row in scored.collect()]
    assert all(row["truncated"] for row in rows)
    explicit = Scorer(model, graph="fp32", truncation="head+tail", head_tokens=40).predict(texts)
    local = [{"id": i, "label": r["label"], "score": r["score"]} for i, r in zip(ids, explicit)]
    _assert_same_rows(local, rows, ["label", "score"])
    # the strategy matters for these texts: raw logits of head and head+tail differ (a recorded calibration
    # can flatten the scores' difference below any fixed tolerance)
    head = Scorer(model, graph="fp32", truncation="head").logits(texts).logits
    both = Scorer(model, graph="fp32", truncation="head+tail", head_tokens=40).logits(texts).logits
    assert np.abs(head - both).max() > 1e-4
