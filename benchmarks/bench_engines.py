"""The same rows through every engine: local, Ray on 1 and on 2 nodes, Spark; rows/s and fixed start-up cost.

Each contender runs `bertbatch score` as a user does, a fresh process end to end (start, read, score, write
Parquet), twice per round: on --small rows (what it costs to start: process, engine, model load on the
workers) and on --rows rows; throughput is (rows - small) / (t_rows - t_small), the start-up cost t_small.
Rounds alternate contenders (local, ray-1, ray-2, spark, local, ...) so a shared machine's load falls on all.
Every contender gets the same 2 CPUs:
  local   --threads 2
  ray-1   a Ray head on 127.0.0.1 with 2 CPUs (one node, 2 actors of 1 thread)
  ray-2   a head and a worker node, 1 CPU each (tests/raycluster.py; 2 actors of 1 thread)
  spark   --master local[2]
The Ray clusters are started once, before the rounds (a long-lived cluster); Spark's session starts per run,
as the CLI does. Peak resident memory: the CLI's process tree (Spark's JVM included) plus, on Ray, every process
of the cluster (raylets, GCS, object store, actors), sampled every 0.1 s. Prints a Markdown table and appends a JSON line to benchmarks/results/engines.jsonl with the
CPU model and flags and the load average before and after.

    .venv/bin/python benchmarks/bench_engines.py MODEL_DIR [--rows 4000] [--small 10] [--rounds 2] [--graph fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/raycluster.py: the Ray cluster the test suite uses too


def cpu_flags() -> list[str]:
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "avx512_bf16")
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in wanted if f in have]
    return []


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run(args: list[str], env: dict, cluster=None) -> tuple[float, dict, float]:
    """Seconds, the summary, and the peak resident MB of the run: the CLI process tree (with Spark's JVM), plus,
    on Ray, every process of the cluster (raylets, object store, actors), sampled every 0.1 s."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "bertbatch", "score", *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    peak = {"rss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = tree_rss(child.pid)
            if cluster is not None:
                for proc in cluster.processes():
                    try:
                        rss += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            peak["rss"] = max(peak["rss"], rss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"bertbatch score {' '.join(map(str, args))} failed:\n{stderr[-3000:]}")
    last = stdout.strip().splitlines()[-1] if stdout.strip() else "{}"
    return seconds, json.loads(last) if last.startswith("{") else {}, peak["rss"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--graph", default="fp32")
    parser.add_argument("--skip", default="", help="comma-separated contenders to leave out (e.g. spark)")
    args = parser.parse_args()
    from raycluster import RayCluster, ray_env

    scratch = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    texts = common.repeat_to(common.sms_texts(), args.rows)
    inputs = {}
    for n in (args.small, args.rows):
        inputs[n] = scratch / f"rows-{n}.parquet"
        common.write_table(inputs[n], texts[:n])
    env = ray_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1")
    load_before = Path("/proc/loadavg").read_text().strip()
    one = RayCluster(workers=0, cpus=2, env=env)
    two = RayCluster(workers=1, cpus=1, env=env)
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, dict[int, list[float]]] = {}
    memory: dict[str, list[float]] = {}
    with one, two:
        contenders = {
            "local": ["--threads", "2"],
            "ray-1": ["--engine", "ray", "--address", one.address],
            "ray-2": ["--engine", "ray", "--address", two.address],
            "spark": ["--engine", "spark", "--master", "local[2]", "--spark-conf", "spark.ui.enabled=false"],
        }
        clusters = {"ray-1": one, "ray-2": two}
        contenders = {k: v for k, v in contenders.items() if k not in skip}
        loads = []
        for round_ in range(args.rounds):
            for name, extra in contenders.items():
                for n in (args.small, args.rows):
                    out = scratch / f"out-{name}-{n}-{round_}"
                    seconds, _, rss = run([args.model, inputs[n], "-o", out, "--graph", args.graph, *extra], env,
                                          clusters.get(name))
                    results.setdefault(name, {}).setdefault(n, []).append(seconds)
                    memory.setdefault(name, []).append(rss)
                    loads.append(float(loadavg()))
                    print(f"round {round_} {name:6s} {n:6d} rows {seconds:7.2f} s  peak {rss:6.0f} MB  "
                          f"load {loads[-1]}", flush=True)
    rows = []
    record = {"bench": "engines", "time": common.now(), "rows": args.rows, "small": args.small, "graph": args.graph,
              "rounds": args.rounds, "cpu": common.cpu_name(), "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
              "load_before": load_before, "load_after": Path("/proc/loadavg").read_text().strip(),
              "load_during": {"min": min(loads), "max": max(loads)}, "commit": common.git_commit(), "engines": {}}
    for name, timings in results.items():
        start = statistics.median(timings[args.small])
        total = statistics.median(timings[args.rows])
        rate = (args.rows - args.small) / (total - start) if total > start else None
        record["engines"][name] = {"startup_s": round(start, 2), "total_s": round(total, 2),
                                   "rows_per_s": round(rate, 1) if rate else None, "timings": timings,
                                   "peak_rss_mb": round(max(memory[name]))}
        rows.append([name, f"{start:.2f}", f"{total:.2f}", common.num(rate), f"{max(memory[name]):.0f}"])
    print(common.markdown_table(["engine", f"start-up ({args.small} rows), s", f"{args.rows} rows, s",
                                 "rows/s after start-up", "peak resident MB (all its processes)"], rows))
    print(json.dumps(record))
    print(common.append_jsonl("engines", record))


if __name__ == "__main__":
    main()
