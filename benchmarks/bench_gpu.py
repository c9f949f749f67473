"""The CUDA path on a real GPU: provider, fp16/fp32 graphs, IOBinding, GPU batch budget, labels vs CPU.

Needs onnxruntime-gpu and a CUDA device. Scores the SMS Spam texts (repeated to --rows) with a model
directory's graphs and records, in one run:
  reference  CPU fp32 labels/logits on the same rows (what CUDA must agree with)
  e2e        `score_file` rows/s, CUDA fp16 and fp32 (session start included), and CPU int8 on this host
  parity     fp16/fp32 on CUDA vs CPU fp32: label agreement, max |Δ prob|, max |Δ logit|
  budget     GPU-only time (tokenized once) per (max_tokens, max_batch_rows)
  binding    IOBinding vs plain session.run; GPU buckets vs exact padding
Prints a Markdown table and appends JSON lines to benchmarks/results/gpu.jsonl (or $BENCH_RESULTS_DIR).

    python benchmarks/bench_gpu.py --model models/sms-spam --texts data/sms_spam.parquet [--rows 200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from common import append_jsonl, context, markdown_table, median_seconds, repeat_to, write_table


def gpu_name() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "no GPU"
    return done.stdout.strip() or "unknown GPU"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def gpu_seconds(scorer, encoded, repeats: int = 3) -> float:
    """Best of `repeats` runs of the planned batches (tokenized once): the device side alone."""
    return min(median_seconds(lambda: scorer.run(encoded), repeats)[1])  # one warm-up run first: kernels per shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/sms-spam")
    parser.add_argument("--texts", default="data/sms_spam.parquet", help="Parquet file with a text column")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--join", type=int, default=1, help="texts joined per row (longer documents)")
    parser.add_argument("--provider", default="cuda", help="cpu only to smoke-test this script without a GPU")
    args = parser.parse_args()

    from bertbatch import Scorer, score_file
    from bertbatch.modeldir import GRAPH_FILES
    from bertbatch.runtime import CUDA, available_providers

    providers = available_providers()
    gpu = args.provider
    if gpu == "cuda" and CUDA not in providers:
        raise SystemExit(f"No CUDAExecutionProvider (onnxruntime offers {providers}).")
    base = pq.read_table(args.texts, columns=["text"])["text"].to_pylist()
    base = [" ".join(base[i:i + args.join]) for i in range(0, len(base), args.join)]
    texts = repeat_to(base, args.rows)
    import onnxruntime

    ctx = {**context(args.model, texts, packages=("onnxruntime", "tokenizers", "pyarrow", "numpy")), "gpu": gpu_name(),
           "onnxruntime_loaded": onnxruntime.__version__}  # the module in use (onnxruntime-gpu may sit beside a CPU one)
    records, rows_out = [], []

    def record(kind: str, **fields):
        rec = {"kind": kind, "rows": len(texts), "join": args.join, **fields, **ctx}
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k not in ctx}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "in.parquet"
        write_table(data, texts)
        small = Path(tmp) / "small.parquet"
        write_table(small, texts[:2000])

        # Reference: CPU fp32 on the first 20,000 rows (the CPU is the slow side here).
        checked = texts[:20_000]
        ref = Scorer(args.model, provider="cpu", graph="fp32")
        (ref_result, seconds) = timed(lambda: ref.logits(checked))
        ref_labels = ref_result.probs.argmax(1)
        record("reference", provider=ref.runner.provider, graph="fp32", seconds=round(seconds, 2), checked=len(checked),
               rows_per_s=round(len(checked) / seconds, 1), threads=ref.runner.threads)

        # End to end, as a user runs it (each call builds its own session; first a small warm-up job).
        for provider, graph in ((gpu, "fp16"), (gpu, "fp32"), ("cpu", "int8")):
            if not (Path(args.model) / GRAPH_FILES[graph]).exists():
                continue
            score_file(small, Path(tmp) / "warm.parquet", args.model, provider=provider, graph=graph, overwrite=True)
            out = Path(tmp) / f"{provider}-{graph}.parquet"
            summary, seconds = timed(lambda: score_file(data, out, args.model, provider=provider, graph=graph,
                                                        overwrite=True))
            table = pq.read_table(out, columns=["id", "label"])
            assert table["id"].to_pylist() == list(range(len(texts))), "rows lost or reordered"
            record("e2e", provider=summary["provider"], graph=graph, seconds=round(seconds, 2),
                   rows_per_s=round(len(texts) / seconds, 1), padding_ratio=summary["padding_ratio"],
                   threads=summary["threads"])
            rows_out.append([f"`bertbatch score` {graph}", summary["provider"], f"{len(texts) / seconds:,.0f}",
                             summary["padding_ratio"], ""])

        # Parity against CPU fp32 (same rows, same tokenization).
        for graph in ("fp16", "fp32"):
            scorer = Scorer(args.model, provider=gpu, graph=graph)
            result = scorer.logits(checked)
            record("parity", graph=graph, provider=scorer.runner.provider,
                   label_agreement=round(float(np.mean(result.probs.argmax(1) == ref_labels)), 6),
                   max_abs_prob_delta=float(np.abs(result.probs - ref_result.probs).max()),
                   max_abs_logit_delta=float(np.abs(result.logits - ref_result.logits).max()))

        # Device-side throughput per batch budget (fp16), tokenized once so only the GPU work is timed.
        sample = texts[:min(50_000, len(texts))]
        for max_tokens, max_rows in ((4096, 64), (8192, 128), (16384, 256), (32768, 512), (65536, 1024)):
            scorer = Scorer(args.model, provider=gpu, graph="fp16", max_tokens=max_tokens, max_batch_rows=max_rows,
                            window_rows=max(4096, 16 * max_rows))
            encoded = scorer.encode(sample)
            seconds = gpu_seconds(scorer, encoded)
            record("budget", graph="fp16", max_tokens=max_tokens, max_batch_rows=max_rows, batches=len(encoded.plan),
                   gpu_rows_per_s=round(len(sample) / seconds, 1))

        # IOBinding vs plain run, buckets vs exact padding (default budget, fp16).
        scorer = Scorer(args.model, provider=gpu, graph="fp16")
        encoded = scorer.encode(sample)
        bound = gpu_seconds(scorer, encoded)
        binding, scorer.runner._binding = scorer.runner._binding, None
        plain = gpu_seconds(scorer, encoded)
        scorer.runner._binding = binding
        scorer.buckets = None
        exact = gpu_seconds(scorer, scorer.encode(sample))
        record("binding", graph="fp16", iobinding_rows_per_s=round(len(sample) / bound, 1),
               plain_run_rows_per_s=round(len(sample) / plain, 1), exact_padding_rows_per_s=round(len(sample) / exact, 1))

    for rec in records:
        append_jsonl("gpu", rec)
    print(f"\n{ctx['gpu']}; {ctx['cpus']} CPUs; {len(texts):,} rows")
    print(markdown_table(["run", "provider", "rows/s", "padding efficiency", ""], rows_out))


if __name__ == "__main__":
    main()
