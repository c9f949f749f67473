"""How many rows a second does the host side of `score_file` move when the model costs nothing?

The real local pipeline (`bertbatch.pipeline.score_file`: read Parquet, tokenize, plan, pad, assemble, write
Parquet) on SMS Spam texts repeated to --rows, with a runner that returns zero logits at once, so what is
timed is everything but the model. Runs at 1, 2 and all of this process's CPUs (CPU affinity set in the
child before anything loads, so ONNX Runtime's, bertbatch's and the tokenizer's rayon pools all see it),
each in a fresh process, --runs times (best and median rows/s, median CPU time per row):
  before  the bertbatch package at --before (default `main`), extracted with `git archive` to a temp dir
  after   the bertbatch package of this checkout
Same input file, same model directory (the MiniLM tokenizer with a 2-label config; no weights are run).
With --model (a directory with exported graphs, e.g. models/sms-spam from `make demo`), also end to end with
the real fp32 and int8 graphs on --e2e-rows rows, before and after alternating, all CPUs, outputs compared.
Prints Markdown tables; appends JSON lines to benchmarks/results/host.jsonl.

    .venv/bin/python benchmarks/bench_host.py [--rows 200000] [--runs 3] [--before main] [--model models/sms-spam] [--unique]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HERE, append_jsonl, cpu_name, emit, extract, markdown_table, now, num, write_table

REPO = HERE.parent
ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


def child(args) -> dict:
    """One timed score_file in this fresh process, pinned to `args.cpus` CPUs (set before any import)."""
    cpus = sorted(os.sched_getaffinity(0))[: args.cpus]
    os.sched_setaffinity(0, cpus)
    import numpy as np

    from bertbatch import runtime
    from bertbatch.pipeline import score_file

    class ZeroRunner:
        """Zero logits at once: the model's cost taken out of the pipeline."""

        provider = runtime.CPU
        input_names = ["input_ids", "attention_mask", "token_type_ids"]
        threads = len(cpus)
        num_labels = 2

        def run(self, input_ids, attention_mask, token_type_ids=None):
            return np.zeros((len(input_ids), 2), dtype=np.float32)

    if hasattr(runtime, "Runner"):  # the Runner protocol: a runner that runs no file says so
        ZeroRunner.graph = None
    out = Path(args.out)
    options = {"graph": args.graph} if args.graph else {"runner": ZeroRunner()}
    score_file(args.warmup_data, out, args.model, overwrite=True, **options)  # imports, first calls
    if args.graph:
        options = {"graph": args.graph}  # a fresh session: session start is part of a real job
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = score_file(args.data, out, args.model, overwrite=True, **options)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    rows = summary["rows_written"]
    # CPU time of all the process's threads per row: what the host path costs, much less sensitive than
    # rows/s to other processes on a shared machine
    return {"cpus": len(cpus), "rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1),
            "cpu_us_per_row": round(cpu / rows * 1e6, 2)}


def model_dir(path: Path) -> Path:
    """The MiniLM tokenizer files with a 2-label config.json: all score_file reads from a model directory."""
    from bertbatch.assets import resolve_model

    source = Path(resolve_model("minilm-l6"))
    path.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, path / name)
    config = json.loads((source / "config.json").read_text())
    config.update(id2label={"0": "ham", "1": "spam"}, label2id={"ham": 0, "spam": 1})
    (path / "config.json").write_text(json.dumps(config))
    return path


def measure(code: Path, cpus: int, model: Path, data: Path, warmup: Path, out: Path, graph: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--cpus", str(cpus), "--model", str(model), "--data", str(data),
           "--warmup-data", str(warmup), "--out", str(out)] + (["--graph", graph] if graph else [])
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{code} on {cpus} CPUs failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def isa_flags() -> list[str]:
    from bertbatch.machine import cpu_flags

    present = cpu_flags()
    return [f for f in ISA if f in present]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", default="main", help="git ref of the 'before' code")
    parser.add_argument("--cpus", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help="model directory with exported graphs: also time fp32 and int8 end to end")
    parser.add_argument("--e2e-rows", type=int, default=10_000)
    parser.add_argument("--unique", action="store_true",
                        help="make every row's text unique (its row number appended), so no tokenizer cache sees a "
                             "text twice; the SMS table has ~4.8k texts, repeated to --rows otherwise")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--graph", "--data", "--warmup-data", "--out"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        emit(child(args))
        return

    import pyarrow.parquet as pq

    from bertbatch.assets import sms_spam_table
    from bertbatch.runtime import available_cpus

    counts = sorted({1, min(2, available_cpus()), available_cpus()})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = model_dir(tmp / "model")
        texts = sms_spam_table()["text"].to_pylist()
        data, warmup = tmp / "sms.parquet", tmp / "warmup.parquet"
        rows = (texts * (-(-args.rows // len(texts))))[: args.rows]
        write_table(data, [f"{t} {i}" for i, t in enumerate(rows)] if args.unique else rows)
        write_table(warmup, texts[:4096])
        codes = {"before": extract(args.before, tmp / "before"), "after": REPO}
        runs: dict[tuple, list[dict]] = {}
        for _ in range(args.runs):  # interleaved, so drifting load hits before and after alike
            for cpus in counts:
                for name, code in codes.items():
                    runs.setdefault((name, cpus), []).append(measure(code, cpus, model, data, warmup, tmp / "out.parquet"))
        for name, code in codes.items():  # the two versions' outputs on the same input, compared cell by cell
            measure(code, available_cpus(), model, data, warmup, tmp / f"{name}.parquet")
        outputs_equal = pq.read_table(tmp / "before.parquet").equals(pq.read_table(tmp / "after.parquet"))
        e2e = end_to_end(args, codes, texts, tmp) if args.model else []

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    record = {"benchmark": "bench_host", "time": now(), "rows": args.rows, "runs": args.runs, "cpu": cpu_name(),
              "isa": isa_flags(), "available_cpus": available_cpus(), "load_avg": os.getloadavg(),
              "before": args.before, "after": commit.stdout.strip(), "outputs_equal": outputs_equal, "results": [],
              "unique_texts": args.unique,
              "end_to_end": e2e}
    table = []
    for cpus in counts:
        best, median, cpu = {}, {}, {}
        for name in codes:
            rates = [r["rows_per_s"] for r in runs[(name, cpus)]]
            costs = [r["cpu_us_per_row"] for r in runs[(name, cpus)]]
            best[name], median[name], cpu[name] = max(rates), statistics.median(rates), statistics.median(costs)
            record["results"].append({"code": name, "cpus": cpus, "rows_per_s_best": best[name],
                                      "rows_per_s_median": median[name], "rows_per_s": rates,
                                      "cpu_us_per_row_median": cpu[name], "cpu_us_per_row": costs})
        table.append([cpus, f"{num(best['before'], 0)} / {num(median['before'], 0)}",
                      f"{num(best['after'], 0)} / {num(median['after'], 0)}", f"{best['after'] / best['before']:.2f}x",
                      f"{cpu['before']:.1f} / {cpu['after']:.1f}", f"{cpu['before'] / cpu['after']:.2f}x"])
    append_jsonl("host", record)
    print(f"{record['cpu']} ({', '.join(record['isa'])}), {record['available_cpus']} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in record['load_avg'])}; {args.rows:,} SMS rows, zero-cost runner, "
          f"{args.runs} runs each; outputs before = after: {outputs_equal}\n")
    print(markdown_table(["CPUs", f"before ({args.before}) rows/s best / median", "after rows/s best / median",
                          "after / before (best)", "CPU µs/row before / after (median)", "CPU before / after"], table))
    if e2e:
        print(f"\nEnd to end, {args.model}, {args.e2e_rows:,} SMS rows, {available_cpus()} CPUs (before/after alternating):\n")
        print(markdown_table(
            ["graph", "before rows/s", "after rows/s", "after / before", "outputs identical"],
            [[r["graph"], num(r["before"], 0), num(r["after"], 0), f"{r['after'] / r['before']:.2f}x", r["outputs_equal"]]
             for r in e2e]))


def end_to_end(args, codes: dict, texts: list, tmp: Path) -> list[dict]:
    """fp32 and int8 with their real graphs, before and after alternating; median rows/s; outputs compared."""
    import pyarrow.parquet as pq

    from bertbatch.runtime import available_cpus

    data, warmup = tmp / "e2e.parquet", tmp / "e2e_warmup.parquet"
    write_table(data, (texts * (-(-args.e2e_rows // len(texts))))[: args.e2e_rows])
    write_table(warmup, texts[:256])
    model, cpus, results = Path(args.model).resolve(), available_cpus(), []
    for graph in ("fp32", "int8"):
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(max(1, args.runs - 1)):
            for name, code in codes.items():
                run = measure(code, cpus, model, data, warmup, tmp / f"{graph}-{name}.parquet", graph)
                rates[name].append(run["rows_per_s"])
        same = pq.read_table(tmp / f"{graph}-before.parquet").equals(pq.read_table(tmp / f"{graph}-after.parquet"))
        results.append({"graph": graph, "rows": args.e2e_rows, "cpus": cpus, "outputs_equal": same, "rows_per_s": rates,
                        **{name: statistics.median(r) for name, r in rates.items()}})
    return results


if __name__ == "__main__":
    main()
