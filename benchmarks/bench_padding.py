"""How much of the compute is real tokens?

Padding efficiency = real tokens / padded tokens (what the model is fed), for batching strategies on real
length distributions. No model runs: only the tokenizer (the packaged MiniLM-L6 tokenizer.json) and
bertbatch.batching.plan_batches.

Corpora (--rows rows each, SMS texts repeated to --rows; mixes drawn with a fixed seed):
  sms@128, sms@512   SMS Spam texts, truncated at 128 / 512 tokens
  mix@128, mix@512   long-tail mix: SMS texts concatenated in random groups of 1-20 (one document each),
                     truncated at 128 / 512 tokens
Strategies:
  max_length  every row padded to the truncation length (tokenizer padding="max_length", the tutorial default)
  no sort     fixed batches of 32 in arrival order, each padded to its longest row (padding="longest")
  window      plan_batches on consecutive windows of --window-rows rows (4096, as `bertbatch score` does)
  global      plan_batches over all rows at once
for token budgets (--budgets, default 2048/8192/32768 padded tokens per batch, max 256 rows per batch) and
padded lengths rounded to: 1 (exact), 8 (what score does on CPU) and the GPU buckets (score on CUDA).
Prints Markdown tables and appends a JSON line to benchmarks/results/padding.jsonl.

    .venv/bin/python benchmarks/bench_padding.py [--rows 20000] [--window-rows 4096] [--budgets 2048,8192,32768]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import (
    append_jsonl,
    cpu_name,
    markdown_table,
    repeat_to,
    sms_texts,
    token_lengths,
)

NAIVE_BATCH = 32
MAX_ROWS = 256
GROUP = (1, 20)


def roundings():
    from bertbatch.batching import GPU_BUCKETS

    return {"exact": {"multiple": 1, "buckets": None},
            "x8 (CPU)": {"multiple": 8, "buckets": None},
            "GPU buckets": {"multiple": 1, "buckets": GPU_BUCKETS}}


def long_tail_mix(texts: list[str], docs: int, seed: int = 0) -> list[str]:
    """`docs` documents, each 1-20 SMS texts drawn at random (with replacement) and joined by spaces."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(GROUP[0], GROUP[1] + 1, size=docs)
    picks = rng.integers(0, len(texts), size=int(sizes.sum()))
    out, pos = [], 0
    for size in sizes:
        out.append(" ".join(texts[i] for i in picks[pos:pos + size]))
        pos += size
    return out


def efficiency_no_sort(lengths: np.ndarray, rounding: dict, max_length: int) -> float:
    from bertbatch.batching import bucket_length

    padded = 0
    for start in range(0, len(lengths), NAIVE_BATCH):
        chunk = lengths[start:start + NAIVE_BATCH]
        padded += len(chunk) * bucket_length(int(chunk.max()), max_length, **rounding)
    return float(lengths.sum()) / padded


def efficiency_planned(lengths: np.ndarray, budget: int, rounding: dict, max_length: int, window: int | None) -> dict:
    from bertbatch.batching import padding_stats, plan_batches

    real = padded = batches = 0
    step = window or len(lengths)
    for start in range(0, len(lengths), step):
        chunk = lengths[start:start + step]
        plan = plan_batches(chunk, budget, MAX_ROWS, max_length, **rounding)
        r, p = padding_stats(plan, chunk)
        real, padded, batches = real + r, padded + p, batches + len(plan)
    return {"efficiency": real / padded, "batches": batches, "padded_tokens": padded}


def corpus_stats(lengths: np.ndarray, max_length: int) -> dict:
    return {"rows": len(lengths), "tokens": int(lengths.sum()), "mean": round(float(lengths.mean()), 1),
            "p50": int(np.median(lengths)), "p95": int(np.percentile(lengths, 95)),
            "p99": int(np.percentile(lengths, 99)), "max": int(lengths.max()),
            "truncated_pct": round(100 * float(np.mean(lengths >= max_length)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows per corpus")
    parser.add_argument("--window-rows", type=int, default=4096)
    parser.add_argument("--budgets", default="2048,8192,32768", help="padded tokens per batch, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    from bertbatch.assets import resolve_model
    from bertbatch.manifest import versions
    from bertbatch.runtime import available_cpus

    tokenizer = Path(resolve_model("minilm-l6")) / "tokenizer.json"
    started = time.perf_counter()
    sms = sms_texts()
    mix = long_tail_mix(sms, args.rows, args.seed)
    sms = repeat_to(sms, args.rows)
    corpora = {}
    for name, texts in (("sms", sms), ("mix", mix)):
        for max_length in (128, 512):
            corpora[f"{name}@{max_length}"] = (token_lengths(tokenizer, texts, max_length), max_length)

    results = []
    for corpus, (lengths, max_length) in corpora.items():
        row = {"corpus": corpus, "max_length": max_length, "stats": corpus_stats(lengths, max_length),
               "max_length_padding": round(float(lengths.sum()) / (len(lengths) * max_length), 4), "by_rounding": {}}
        for label, rounding in roundings().items():
            entry = {"no_sort": round(efficiency_no_sort(lengths, rounding, max_length), 4), "window": {}, "global": {}}
            for budget in budgets:
                for strategy, window in (("window", args.window_rows), ("global", None)):
                    figures = efficiency_planned(lengths, budget, rounding, max_length, window)
                    entry[strategy][str(budget)] = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
            row["by_rounding"][label] = entry
        results.append(row)
    seconds = time.perf_counter() - started

    record = {"benchmark": "bench_padding", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": args.rows,
              "seed": args.seed, "tokenizer": "minilm-l6", "window_rows": args.window_rows, "budgets": budgets,
              "max_batch_rows": MAX_ROWS, "naive_batch": NAIVE_BATCH, "mix_group": list(GROUP),
              "cpu": cpu_name(), "cpus": available_cpus(), "versions": versions("tokenizers", "numpy"),
              "seconds": round(seconds, 1), "results": results}
    append_jsonl("padding", record)

    print(f"Token lengths (MiniLM-L6 tokenizer, special tokens included), {args.rows:,} rows per corpus:\n")
    print(markdown_table(
        ["corpus", "mean", "p50", "p95", "p99", "max", "% at max length"],
        [[r["corpus"], r["stats"]["mean"], r["stats"]["p50"], r["stats"]["p95"], r["stats"]["p99"], r["stats"]["max"],
          r["stats"]["truncated_pct"]] for r in results]))
    print(f"\nPadding efficiency (real / padded tokens); window = plan_batches per {args.window_rows:,} rows as score "
          f"does, global = over all rows; budgets in padded tokens per batch, at most {MAX_ROWS} rows:\n")
    headers = ["corpus", "padded length", "max_length", f"no sort ({NAIVE_BATCH})"]
    headers += [f"window {b:,}" for b in budgets] + [f"global {b:,}" for b in budgets]
    lines = []
    for r in results:
        for label, entry in r["by_rounding"].items():
            lines.append([r["corpus"], label, f"{r['max_length_padding']:.3f}", f"{entry['no_sort']:.3f}"]
                         + [f"{entry['window'][str(b)]['efficiency']:.3f}" for b in budgets]
                         + [f"{entry['global'][str(b)]['efficiency']:.3f}" for b in budgets])
    print(markdown_table(headers, lines))
    print(f"\nmax_length pads every row to the truncation length whatever the rounding. {seconds:.0f} s.")


if __name__ == "__main__":
    main()
