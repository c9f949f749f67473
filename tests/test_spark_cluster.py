"""The Spark engine on a real standalone cluster (a master and two 1-core workers on 127.0.0.1).

Drivers run as subprocesses, as a user runs them: the installed CLI with its default options, and a Python
script that builds its own SparkSession and calls `bertbatch.spark.score`. (A process holds one SparkContext,
and this one's may already be the local session of test_spark.py.) `pytest -m spark_cluster` runs these alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark")
pytest.importorskip("pandas")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime (java on PATH or JAVA_HOME)", allow_module_level=True)

from cluster import StandaloneCluster
from helpers import make_texts

import bertbatch
from bertbatch import score_file

pytestmark = pytest.mark.spark_cluster
ROOT = Path(bertbatch.__file__).resolve().parents[1]  # this checkout: drivers and executors import it
ROWS = 4000


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_PYTHON"}  # the CLI must choose the workers' Python
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), SPARK_LOCAL_IP="127.0.0.1",
               HF_HUB_OFFLINE="1", **extra)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with StandaloneCluster(tmp_path_factory.mktemp("cluster"), workers=2, env=_env()) as running:
        yield running


@pytest.fixture(scope="module")
def rows_path(tmp_path_factory):
    texts, _ = make_texts(ROWS, seed=3)
    path = tmp_path_factory.mktemp("cluster-data") / "rows.parquet"
    pq.write_table(pa.table({"id": [f"{i:06d}" for i in range(ROWS)], "text": texts}), path)
    return path


def _labels(path) -> dict:
    table = pq.read_table(path, columns=["id", "label"])
    return dict(zip(table["id"].to_pylist(), table["label"].to_pylist()))


def _ids_once(path, expected: int) -> None:
    ids = pq.read_table(path, columns=["id"])["id"].to_pylist()
    assert len(ids) == expected
    assert len(set(ids)) == expected


def _cli(args, **kwargs):
    return [sys.executable, "-m", "bertbatch", "score", *map(str, args)]


def test_cli_default_options_score_every_row_once_on_a_standalone_cluster(cluster, tiny_exported, rows_path,
                                                                         tmp_path):
    out = tmp_path / "scored"
    run = subprocess.run(_cli([tiny_exported, rows_path, "-o", out, "--engine", "spark", "--master", cluster.url]),
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300, check=False)

    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["master"] == cluster.url
    assert summary["model_shipped"] is True  # the default on a cluster: one zip through addArchive
    assert summary["rows_in"] == summary["rows_written"] == ROWS
    assert summary["input_partitions"] == 1 and summary["partitions"] == 2 and summary["repartitioned"] is True
    assert sum(summary["providers"].values()) == ROWS
    assert (out / "_SUCCESS").exists()
    _ids_once(out, ROWS)
    local = tmp_path / "local.parquet"
    score_file(rows_path, local, tiny_exported, graph=summary["graph"])  # the graph the executors picked
    assert _labels(out) == _labels(local)


DRIVER = textwrap.dedent("""
    import glob, json, os, sys
    from pyspark.sql import SparkSession
    from bertbatch import spark as bspark
    from bertbatch.errors import ModelError

    url, model, rows, out, *work_dirs = sys.argv[1:]
    spark = (SparkSession.builder.master(url).appName("bertbatch api test")
             .config("spark.ui.enabled", "false").getOrCreate())
    result = {}
    bspark.score(spark.read.parquet(rows), model, graph="fp32").write.parquet(out)

    # the model changed on one side: worker0's executor's unpacked copy of the shipped model is edited
    changed = glob.glob(os.path.join(work_dirs[0], "app-*", "*", "bertbatch-*", "tokenizer.json"))
    result["changed"] = changed
    for path in changed:
        with open(path, "a") as fh:
            fh.write(" ")
    try:
        bspark.score(spark.read.parquet(rows), model, graph="fp32").write.parquet(out + "-again")
    except ModelError as exc:
        result["error"] = str(exc)
    tracker = spark.sparkContext.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup() for s in tracker.getJobInfo(j).stageIds]
    result["failed_tasks"] = sum(tracker.getStageInfo(s).numFailedTasks for s in stages if tracker.getStageInfo(s))
    result["jobs"] = len(tracker.getJobIdsForGroup())
    spark.stop()
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def api_run(cluster, tiny_exported, rows_path, tmp_path_factory):
    """The driver script above, run once: a SparkSession the user builds, then the Python API."""
    tmp = tmp_path_factory.mktemp("api")
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    out = tmp / "scored"
    run = subprocess.run([sys.executable, str(script), cluster.url, str(tiny_exported), str(rows_path), str(out),
                          str(cluster.work_dir(0))], capture_output=True, text=True, cwd=tmp, timeout=300,
                         env=_env(PYSPARK_PYTHON=sys.executable), check=False)  # a session the user builds: their Python
    assert run.returncode == 0, run.stderr[-3000:]
    return out, json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_python_api_labels_equal_a_local_fp32_run_on_a_standalone_cluster(api_run, tiny_exported, rows_path,
                                                                         tmp_path):
    out, _, _ = api_run
    _ids_once(out, ROWS)
    local = tmp_path / "local.parquet"
    score_file(rows_path, local, tiny_exported, graph="fp32")
    assert _labels(out) == _labels(local)


def test_model_changed_on_an_executor_is_one_error_on_the_driver_not_retried(api_run):
    _, result, _ = api_run
    assert result["changed"], "the executor of worker0 unpacked no model copy"
    message = result["error"]
    assert "\n" not in message
    assert message.startswith("Model file tokenizer.json differs between the driver and the executor on ")
    assert "Run the job again" in message
    assert result["failed_tasks"] == 0  # found by the probe, which never fails a task: nothing for Spark to retry
    assert "Py4J" not in message and "Traceback" not in message


def test_worker_killed_mid_job_every_row_still_written_once(cluster, tiny_exported, tmp_path):
    rows = 40_000  # long enough that both executors are scoring when one is killed
    texts, _ = make_texts(rows, seed=5)
    src = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": [f"{i:06d}" for i in range(rows)], "text": texts}), src)
    out = tmp_path / "scored"
    stderr = tmp_path / "driver.err"
    with open(stderr, "w") as err:
        driver = subprocess.Popen(_cli([tiny_exported, src, "-o", out, "--engine", "spark", "--master", cluster.url,
                                        "--max-batch-rows", "8"]),
                                  stdout=subprocess.PIPE, stderr=err, text=True, env=_env(), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 240
            while not list(out.glob("_temporary/*/_temporary/*/part-*")) and time.monotonic() < deadline:
                assert driver.poll() is None, stderr.read_text()[-3000:]
                time.sleep(0.1)
            assert driver.poll() is None and not (out / "_SUCCESS").exists()  # the write is under way
            cluster.kill_worker(1)
            output, _ = driver.communicate(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 0, stderr.read_text()[-3000:]
    assert "Lost executor" in stderr.read_text()
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["rows_in"] == summary["rows_written"] == rows
    _ids_once(out, rows)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs: a worker with fewer than the driver")
def test_executors_on_another_kind_of_node_run_the_graph_the_driver_chose(tiny_exported, rows_path, tmp_path):
    """The driver's tune record picks fp32; the only worker is pinned to one CPU, so its machine signature has no
    record and would fall back to the safe default (int8). Every row must still come from fp32."""
    from bertbatch.tune import tune

    model = tmp_path / "model"
    shutil.copytree(tiny_exported, model)
    record = tune(model, provider="cpu", seconds=1, rows=16, graphs=["fp32"])
    assert record["choice"]["graph"] == "fp32"
    out = tmp_path / "scored"
    with StandaloneCluster(tmp_path / "pinned", workers=1, env=_env(), worker_cpus={0}) as pinned:
        # --no-ship-model: executors read the whole model directory (shared file system), int8 included
        run = subprocess.run(_cli([model, rows_path, "-o", out, "--engine", "spark", "--master", pinned.url,
                                   "--probs", "--no-ship-model"]),
                             capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    probs = {}
    for graph in ("fp32", "int8"):
        local = tmp_path / f"{graph}.parquet"
        score_file(rows_path, local, model, graph=graph, probs=True)
        probs[graph] = _probs(local)
    spark_probs = _probs(out)
    assert np.abs(probs["fp32"] - probs["int8"]).max() > 1e-4  # the two graphs are told apart by their probs
    assert np.abs(spark_probs - probs["fp32"]).max() <= 1e-6


def _probs(path) -> np.ndarray:
    table = pq.read_table(path).sort_by("id")
    return np.stack([table[c].to_numpy() for c in table.column_names if c.startswith("prob_")], axis=1)
