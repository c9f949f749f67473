"""What does Spark cost over `bertbatch score` on one machine, for the same rows and the same cores?

Scores the SMS Spam texts (repeated to --rows) with a model directory (default models/sms-spam, made by
`make demo`) two ways, on the same cores:
  local   bertbatch.score_file with --threads W (the baseline)
  spark   bertbatch.spark.score_files on local[W]: W Python workers, one intra-op thread each
Both are timed end to end as the CLI runs them (read, score, write Parquet). Spark's session start and the
workers' model load happen in an untimed warm-up, as on a long-lived cluster. Median of --runs runs each.
Prints a Markdown table and appends a JSON line to benchmarks/results/spark.jsonl.

    .venv/bin/python benchmarks/bench_spark.py [MODEL_DIR] [--rows 20000] [--workers 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def make_input(path: Path, rows: int) -> None:
    from bertbatch.assets import sms_spam_table

    texts = sms_spam_table()["text"].to_pylist()
    reps = -(-rows // len(texts))
    pq.write_table(pa.table({"id": np.arange(rows, dtype=np.int64), "text": (texts * reps)[:rows]}), path)


def spark_session(workers: int, scratch: Path):
    from pyspark.sql import SparkSession

    # local workers start $PYSPARK_PYTHON (default: `python3` on PATH); the spark.pyspark.python conf is not read
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master(f"local[{workers}]")
        .appName("bench_spark")
        .config("spark.ui.enabled", "false")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.local.dir", str(scratch / "spark-local"))
        .config("spark.sql.warehouse.dir", str(scratch / "spark-warehouse"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def timed(fn, runs: int) -> tuple[float, dict]:
    """Median seconds of `runs` calls, and the last call's summary."""
    seconds, summary = [], None
    for _ in range(runs):
        start = time.perf_counter()
        summary = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), summary


def labels_by_id(path: Path) -> dict:
    table = pq.read_table(path, columns=["id", "label"])
    return dict(zip(table["id"].to_pylist(), table["label"].to_pylist()))


def context(model: str, data: Path) -> dict:
    from tokenizers import Tokenizer

    from bertbatch.bench import cpu_model
    from bertbatch.manifest import versions
    from bertbatch.runtime import available_cpus

    cpu = cpu_model()
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
    tok = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    tok.enable_truncation(128)
    texts = pq.read_table(data, columns=["text"])["text"].to_pylist()[:5000]
    lengths = np.array([len(e.ids) for e in tok.encode_batch(texts)])
    return {
        "cpu": cpu, "cpus": available_cpus(), "python": platform.python_version(), "java": java[0] if java else None,
        "versions": versions("onnxruntime", "pyspark", "pyarrow", "tokenizers"),
        "token_lengths": {"mean": round(float(lengths.mean()), 1), "p50": int(np.median(lengths)),
                          "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/sms-spam")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="local[W] Spark workers; the local run gets W threads")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each engine (median reported)")
    parser.add_argument("--graph", help="fp32 | int8 (default: the best for CPU)")
    args = parser.parse_args()
    if not (Path(args.model) / "onnx").is_dir():
        raise SystemExit(f"{args.model} has no exported graphs: run `make demo` (or bertbatch train + export) first.")

    from bertbatch import score_file
    from bertbatch.spark import score_files

    options = {"graph": args.graph, "overwrite": True}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, warm = tmp / "input.parquet", tmp / "warm.parquet"
        make_input(data, args.rows)
        make_input(warm, 256)
        ctx = context(args.model, data)

        score_file(warm, tmp / "local_warm.parquet", args.model, threads=args.workers, **options)
        local_s, local = timed(lambda: score_file(data, tmp / "local.parquet", args.model, threads=args.workers,
                                                  **options), args.runs)

        started = time.perf_counter()
        session = spark_session(args.workers, tmp)
        session_s = time.perf_counter() - started
        try:
            score_files([warm], tmp / "spark_warm", args.model, **options)  # workers load the model once
            spark_s, spark = timed(lambda: score_files([data], tmp / "spark_out", args.model, **options), args.runs)
        finally:
            session.stop()

        local_labels, spark_labels = labels_by_id(tmp / "local.parquet"), labels_by_id(tmp / "spark_out")
        agreement = float(np.mean([spark_labels[k] == v for k, v in local_labels.items()]))
        assert len(spark_labels) == len(local_labels) == args.rows, "row counts differ"

    runs = [
        {"engine": "local", "rows": args.rows, "seconds": round(local_s, 3), "rows_per_s": round(args.rows / local_s, 1),
         "threads": local["threads"], "provider": local["provider"], "graph": local["graph"]},
        {"engine": "spark", "master": spark["master"], "rows": args.rows, "seconds": round(spark_s, 3),
         "rows_per_s": round(args.rows / spark_s, 1), "partitions": spark["partitions"], "providers": spark["providers"],
         "session_start_s": round(session_s, 2), "label_agreement_with_local": round(agreement, 5)},
    ]
    overhead = spark_s / local_s  # > 1: Spark is slower on the same cores
    record = {"benchmark": "bench_spark", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": args.model,
              "rows": args.rows, "workers": args.workers, "runs_each": args.runs, **ctx, "runs": runs,
              "spark_overhead_ratio": round(overhead, 3)}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with open(results / "spark.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")

    print(f"{ctx['cpu']}, {ctx['cpus']} CPUs; {ctx['java']}; tokens/row mean {ctx['token_lengths']['mean']}, "
          f"p95 {ctx['token_lengths']['p95']}; {args.rows:,} rows, median of {args.runs}\n")
    print("| engine | cores | seconds | rows/s | × local | labels = local |")
    print("|---|---|---|---|---|---|")
    print(f"| local score_file | {args.workers} threads | {runs[0]['seconds']} | {runs[0]['rows_per_s']:,} | 1.0 | - |")
    print(f"| spark {spark['master']} | {args.workers} workers × 1 thread | {runs[1]['seconds']} | "
          f"{runs[1]['rows_per_s']:,} | {round(local_s / spark_s, 2)} | {agreement:.2%} |")
    print(f"\nSpark overhead: {overhead:.2f}x the local time (session start {session_s:.1f} s, not included)")


if __name__ == "__main__":
    main()
