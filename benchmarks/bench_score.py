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
import os
import platform
import resource
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


def child(mode: str, model: str, data: str, out: str) -> dict:
    """One measurement in this (fresh) process; labels written to `out` for the agreement check."""
    texts = pq.read_table(data, columns=["text"])["text"].to_pylist()
    if mode == "pipeline":
        from transformers import pipeline

        clf = pipeline("text-classification", model=model, device="cpu", truncation=True)
        clf(texts[:64], batch_size=32)  # warm-up
        start = time.perf_counter()
        labels = [r["label"] for r in clf(texts, batch_size=32)]
        seconds = time.perf_counter() - start
        extra = {}
    else:
        from bertbatch import score_file

        start = time.perf_counter()
        summary = score_file(data, out, model, graph=mode, overwrite=True)
        seconds = time.perf_counter() - start
        labels = pq.read_table(out, columns=["label"])["label"].to_pylist()
        extra = {"padding_ratio": summary["padding_ratio"], "threads": summary["threads"]}
    Path(out + ".labels.json").write_text(json.dumps(labels))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "rows": len(texts), "seconds": round(seconds, 2), "rows_per_s": round(len(texts) / seconds, 1),
            "peak_rss_mb": round(peak_mb, 1), **extra}


def run_child(mode: str, model: str, data: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", model, "--data", str(data), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def context(model: str, data: Path) -> dict:
    from bertbatch.manifest import versions
    from bertbatch.runtime import available_cpus
    from tokenizers import Tokenizer

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    tok = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    tok.enable_truncation(128)
    texts = pq.read_table(data, columns=["text"])["text"].to_pylist()[:5000]
    lengths = np.array([len(e.ids) for e in tok.encode_batch(texts)])
    return {
        "cpu": cpu, "cpus": available_cpus(), "python": platform.python_version(),
        "versions": versions("onnxruntime", "torch", "transformers", "tokenizers", "pyarrow"),
        "token_lengths": {"mean": round(float(lengths.mean()), 1), "p50": int(np.median(lengths)),
                          "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sms-spam")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--memory-factor", type=int, default=10, help="int8 rerun on this many times the rows")
    parser.add_argument("--child")
    parser.add_argument("--data")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.data, args.out)))
        return
    if not (Path(args.model) / "onnx" / "model_int8.onnx").exists():
        raise SystemExit(f"{args.model} has no exported graphs: run `make demo` (or bertbatch train + export) first.")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "input.parquet"
        make_input(data, args.rows)
        ctx = context(args.model, data)
        runs = {mode: run_child(mode, args.model, data, tmp / f"{mode}.parquet") for mode in ("pipeline", "fp32", "int8")}
        big = tmp / "big.parquet"
        make_input(big, args.rows * args.memory_factor)
        runs["int8_x10"] = run_child("int8", args.model, big, tmp / "int8_big.parquet")
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
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with open(results / "score.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")

    print(f"{ctx['cpu']}, {ctx['cpus']} CPUs; tokens/row mean {ctx['token_lengths']['mean']}, "
          f"p95 {ctx['token_lengths']['p95']}; {args.rows:,} rows\n")
    print("| run | rows | rows/s | × pipeline | padding efficiency | peak RSS MB | labels = pipeline |")
    print("|---|---|---|---|---|---|---|")
    for r in runs.values():
        print(f"| {r['mode']} | {r['rows']:,} | {r['rows_per_s']:,} | {r['speedup_vs_pipeline']} | "
              f"{r.get('padding_ratio', '-')} | {r['peak_rss_mb']} | {r.get('label_agreement_with_pipeline', '-')} |")
    print(f"\nPeak RSS growth at {args.memory_factor}x rows (int8): {growth:+.1%}")


if __name__ == "__main__":
    main()
