"""fp32 vs int8 (vs PyTorch) at a fixed batch: rows/s and latency per sequence length, through `bertbatch bench`.

    .venv/bin/python benchmarks/bench_graphs.py [--model models/sms-spam] [--batch 32]
Appends the records to benchmarks/results/graphs.jsonl and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertbatch.bench import benchmark, summary_markdown

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sms-spam")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-lengths", default="32,64,128")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    records = benchmark(args.model, graphs=["torch", "fp32", "int8"], batch_sizes=(args.batch,),
                        seq_lengths=tuple(int(x) for x in args.seq_lengths.split(",")), runs=args.runs)
    (HERE / "results").mkdir(exist_ok=True)
    with open(HERE / "results" / "graphs.jsonl", "a") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    print(summary_markdown(records))
