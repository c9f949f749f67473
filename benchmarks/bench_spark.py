"""What does Spark cost over `bertbatch score` on one machine, for the same rows and the same cores?

Scores the SMS Spam texts (repeated to --rows) with a model directory (default models/sms-spam, made by
`make demo`) two ways, on the same W cores, in one run:
  local       bertbatch.score_file with --threads W (the baseline)
  standalone  bertbatch.spark.score_files on a real standalone cluster started here (tests/cluster.py): a master
              and W workers with 1 core and 1g each on 127.0.0.1; the model shipped as a zip (the default)
Runs alternate (local, standalone, local, ...) so that a shared machine's load falls on both alike; each is timed
end to end as the CLI runs it (read, score, write Parquet, count the output). The session start and the
workers' model load happen in an untimed warm-up, as on a long-lived cluster. Median of --runs runs each.
After the runs, each executor JVM's RSS and each Python worker's RSS, USS and peak RSS (VmHWM) are read, to size
spark.executor.pyspark.memory / memoryOverhead. Prints a Markdown table, appends a JSON line to
benchmarks/results/spark.jsonl. (The earlier local[2] comparison is in the same file.)

    .venv/bin/python benchmarks/bench_spark.py [MODEL_DIR] [--rows 20000] [--workers 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/cluster.py: the standalone cluster the test suite uses too


def session(master: str, scratch: Path):
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(master)
        .appName("bench_spark")
        .config("spark.ui.enabled", "false")
        .config("spark.local.dir", str(scratch / "spark-local"))
        .config("spark.sql.warehouse.dir", str(scratch / "spark-warehouse"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def isa_flags() -> list[str]:
    """The SIMD flags ONNX Runtime's kernels care about, as /proc/cpuinfo lists them (Linux)."""
    from bertbatch.machine import cpu_flags

    flags = cpu_flags()
    return [f for f in ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]


def labels_by_id(path: Path) -> dict:
    table = pq.read_table(path, columns=["id", "label"])
    return dict(zip(table["id"].to_pylist(), table["label"].to_pylist()))


def worker_memory() -> dict:
    """MB held by each executor JVM and each Python worker now (idle, model loaded): RSS and USS."""
    import psutil

    jvms, workers = [], []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        try:
            if "CoarseGrainedExecutorBackend" in cmdline:
                jvms.append(round(proc.memory_info().rss / 2**20))
            elif "pyspark.daemon" in cmdline:
                for child in proc.children():  # forked Python workers
                    info = child.memory_full_info()
                    workers.append({"rss_mb": round(info.rss / 2**20), "uss_mb": round(info.uss / 2**20),
                                    "peak_rss_mb": peak_rss_mb(child.pid)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"executor_jvm_rss_mb": jvms, "python_workers": workers}


def peak_rss_mb(pid: int) -> int | None:
    """VmHWM of a process: its resident high-water mark, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return None


def alternate(fns: dict, runs: int) -> dict:
    """{name: median seconds}, calling each fn once per round, round after round (after one untimed round)."""
    import statistics

    times = {name: [] for name in fns}
    for round_ in range(runs + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/sms-spam")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="W: Spark workers (1 core each); the local run gets W threads")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each engine (median reported)")
    parser.add_argument("--graph", help="fp32 | int8 (default: the best for CPU)")
    args = parser.parse_args()
    if not (Path(args.model) / "onnx").is_dir():
        raise SystemExit(f"{args.model} has no exported graphs: run `make demo` (or bertbatch train + export) first.")

    from cluster import StandaloneCluster

    from bertbatch import score_file
    from bertbatch.spark import score_files

    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # the driver, before its JVM starts: everything on loopback
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # sessions built here: workers run this Python
    options = {"graph": args.graph, "overwrite": True}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, warm = tmp / "input.parquet", tmp / "warm.parquet"
        common.make_input(data, args.rows)
        common.make_input(warm, 256)
        ctx = common.context(args.model, common.read_texts(data), packages=("onnxruntime", "pyspark", "pyarrow",
                                                                             "tokenizers"))
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
        ctx["java"] = java[0] if java else None
        ctx["isa"] = isa_flags()

        env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        with StandaloneCluster(tmp / "cluster", workers=args.workers, env=env) as cluster:
            started = time.perf_counter()
            spark = session(cluster.url, tmp)
            start_s = time.perf_counter() - started
            try:
                score_files([warm], tmp / "warm_out", args.model, **options)  # ships the model, workers load it
                medians = alternate({
                    "local": lambda: score_file(data, tmp / "local.parquet", args.model, threads=args.workers,
                                                **options),
                    "standalone": lambda: score_files([data], tmp / "standalone", args.model, **options),
                }, args.runs)
                summary = score_files([data], tmp / "standalone", args.model, **options)
                memory = worker_memory()
            finally:
                spark.stop()
        local = score_file(data, tmp / "local.parquet", args.model, threads=args.workers, **options)
        local_labels, labels = labels_by_id(tmp / "local.parquet"), labels_by_id(tmp / "standalone")
        assert len(labels) == len(local_labels) == args.rows, "row counts differ"
        local_s, spark_s = medians["local"], medians["standalone"]
        runs = [
            {"engine": "local", "cores": f"{args.workers} ORT threads", "seconds": round(local_s, 3),
             "rows_per_s": round(args.rows / local_s, 1), "provider": local["provider"], "graph": local["graph"]},
            {"engine": "spark standalone", "master": summary["master"], "cores": f"{args.workers} workers x 1 thread",
             "seconds": round(spark_s, 3), "rows_per_s": round(args.rows / spark_s, 1),
             "x_local_time": round(spark_s / local_s, 3), "partitions": summary["partitions"],
             "model_shipped": summary["model_shipped"], "providers": summary["providers"],
             "session_start_s": round(start_s, 2),
             "label_agreement_with_local": common.agreement([labels[k] for k in local_labels],
                                                            list(local_labels.values()))},
        ]

    record = {"benchmark": "bench_spark", "time": common.now(), "model": args.model, "rows": args.rows,
              "workers": args.workers, "runs_each": args.runs, **ctx, "runs": runs, "standalone_memory": memory,
              "note": "machine shared with other jobs; ratios are from one run"}
    common.append_jsonl("spark", record)

    print(f"{common.context_line(ctx)}; {' '.join(ctx['isa'])}; {ctx['java']}; {args.rows:,} rows, median of {args.runs} (machine shared)\n")
    print(common.markdown_table(
        ["engine", "cores", "seconds", "rows/s", "time × local", "session start s", "labels = local"],
        [[r["engine"], r["cores"], r["seconds"], common.num(r["rows_per_s"]), r.get("x_local_time", 1.0),
          r.get("session_start_s", "-"), f"{r.get('label_agreement_with_local', 1):.2%}"] for r in runs]))
    print(f"\nStandalone, after scoring: executor JVM RSS {memory['executor_jvm_rss_mb']} MB; Python workers "
          + ", ".join(f"RSS {w['rss_mb']} / USS {w['uss_mb']} / peak RSS {w['peak_rss_mb']} MB"
                      for w in memory["python_workers"]))


if __name__ == "__main__":
    main()
