"""How much faster is `bertbatch score` than a transformers pipeline loop, end to end, on the same rows?

Scores the SMS Spam texts (repeated to --rows) with the fine-tuned MiniLM (`make demo` creates
models/sms-spam) three ways, each in a fresh process so peak RSS is per run:
  pipeline  transformers.pipeline("text-classification", batch_size=32), PyTorch fp32, CPU (the baseline)
  fp32      bertbatch score, fp32 O2 graph
  int8      bertbatch score, int8 graph
then int8 again on 10x the rows to show memory stays flat. Prints a Markdown table and appends JSON lines
to benchmarks/results/score.jsonl.

    .venv/bin/python benchmarks/bench_score.py [--model models/sms-spam] [--rows 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from common import (
    add_child_arguments,
    append_jsonl,
    context,
    emit,
    make_input,
    markdown_table,
    peak_rss_mb,
    read_texts,
    run_child,
)


def child(mode: str, model: str, data: str, out: str) -> dict:
    """One measurement in this (fresh) process; labels written to `out` for the agreement check.

    For bertbatch the peak RSS is read right after score_file returns, before this harness loads anything
    that grows with the input (the texts, the labels), so the memory figure is the scorer's own."""
    if mode == "pipeline":
        from transformers import pipeline

        texts = read_texts(data)
        clf = pipeline("text-classification", model=model, device="cpu", truncation=True)
        clf(texts[:64], batch_size=32)  # warm-up
        start = time.perf_counter()
        labels = [r["label"] for r in clf(texts, batch_size=32)]
        seconds = time.perf_counter() - start
        rows, peak, extra = len(texts), peak_rss_mb(), {}
    else:
        from bertbatch import score_file

        start = time.perf_counter()
        summary = score_file(data, out, model, graph=mode, overwrite=True)
        seconds = time.perf_counter() - start
        rows, peak = summary["rows_written"], peak_rss_mb()
        labels = pq.read_table(out, columns=["label"])["label"].to_pylist()
        extra = {"padding_ratio": summary["padding_ratio"], "threads": summary["threads"]}
    Path(out + ".labels.json").write_text(json.dumps(labels))
    return {"mode": mode, "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1),
            "peak_rss_mb": peak, **extra}


def measure(mode: str, model: str, data: Path, out: Path) -> dict:
    return run_child(__file__, [mode, "--model", model, "--data", data, "--out", out], mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sms-spam")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--memory-factor", type=int, default=10, help="int8 rerun on this many times the rows")
    add_child_arguments(parser)
    args = parser.parse_args()
    if args.child:
        emit(child(args.child, args.model, args.data, args.out))
        return
    if not (Path(args.model) / "onnx" / "model_int8.onnx").exists():
        raise SystemExit(f"{args.model} has no exported graphs: run `make demo` (or bertbatch train + export) first.")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "input.parquet"
        make_input(data, args.rows)
        ctx = context(args.model, read_texts(data))
        runs = {mode: measure(mode, args.model, data, tmp / f"{mode}.parquet") for mode in ("pipeline", "fp32", "int8")}
        big = tmp / "big.parquet"
        make_input(big, args.rows * args.memory_factor)
        runs["int8_x10"] = measure("int8", args.model, big, tmp / "int8_big.parquet")
        runs["int8_x10"]["mode"] = f"int8 ({args.memory_factor}x rows)"
        baseline_labels = json.loads((tmp / "pipeline.parquet.labels.json").read_text())
        for mode in ("fp32", "int8"):
            labels = json.loads((tmp / f"{mode}.parquet.labels.json").read_text())
            runs[mode]["label_agreement_with_pipeline"] = round(float(np.mean(np.array(labels) == np.array(baseline_labels))), 5)

    base = runs["pipeline"]["rows_per_s"]
    for r in runs.values():
        r["speedup_vs_pipeline"] = round(r["rows_per_s"] / base, 2)
    growth = runs["int8_x10"]["peak_rss_mb"] / runs["int8"]["peak_rss_mb"] - 1
    record = {"benchmark": "bench_score", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": args.model,
              "rows": args.rows, **ctx, "runs": list(runs.values()), "peak_rss_growth_10x": round(growth, 4)}
    append_jsonl("score", record)

    print(f"{ctx['cpu']}, {ctx['cpus']} CPUs; tokens/row mean {ctx['token_lengths']['mean']}, "
          f"p95 {ctx['token_lengths']['p95']}; {args.rows:,} rows\n")
    print(markdown_table(
        ["run", "rows", "rows/s", "× pipeline", "padding efficiency", "peak RSS MB", "labels = pipeline"],
        [[r["mode"], f"{r['rows']:,}", f"{r['rows_per_s']:,}", r["speedup_vs_pipeline"], r.get("padding_ratio", "-"),
          r["peak_rss_mb"], r.get("label_agreement_with_pipeline", "-")] for r in runs.values()]))
    print(f"\nPeak RSS growth at {args.memory_factor}x rows (int8): {growth:+.1%}")


if __name__ == "__main__":
    main()
