"""Fine-tuning time before and after each speed change, with test accuracy beside it (issue 21).

Each variant is a fresh process that fine-tunes MiniLM-L6 on the same seeded subsample (same epochs, learning
rate, batch size, max length, seed) and scores the same test rows; rounds alternate the variants so a shared
machine's load falls on all of them:

  before                  `bertbatch train` as it was at --before (default e053f9e, the round-3 main: the
                          transformers tokenizer call, length-grouped batches)
  after                   this tree (bertbatch.tokenize's flat arrays, the same length-grouped batches)
  after, no length groups this tree with TrainingArguments(group_by_length=False): every batch padded to its
                          longest row in random order, what the length grouping saves
  after, bf16             --precision bf16 (only where the CPU has AMX-BF16 or AVX512-BF16; skipped elsewhere,
                          where torch emulates bf16 and `--precision auto` picks fp32)

Reports wall seconds of the whole train command (tokenizing, every epoch, evaluation and the test pass), the
Trainer's seconds per epoch, and test accuracy / macro-F1. Appends to results/train_speed.jsonl with the CPU
model, its ISA flags and the load average.

    .venv/bin/python benchmarks/bench_train_speed.py [--dataset r8] [--train-rows 1500] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

# The child: fine_tune with the variant's code on PYTHONPATH; prints the manifest's train figures as JSON.
CHILD = r"""
import json, time
no_groups = {no_groups}
if no_groups:
    import transformers
    original = transformers.TrainingArguments.__init__
    def without_groups(self, *a, **k):
        k["group_by_length"] = False
        original(self, *a, **k)
    transformers.TrainingArguments.__init__ = without_groups
from bertbatch.config import TrainConfig
from bertbatch.train import fine_tune
kwargs = {kwargs}
started = time.perf_counter()
manifest = fine_tune(kwargs.pop("data"), kwargs.pop("output"), TrainConfig(**kwargs))
print("RESULT " + json.dumps({{"wall": time.perf_counter() - started, "train": manifest["train"]}}))
"""


def run_variant(code: Path, kwargs: dict, no_groups: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", CHILD.format(no_groups=no_groups, kwargs=repr(kwargs))],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"train failed ({code}):\n{done.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    result["load_before"] = round(load, 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("r8", "20ng"), default="r8")
    parser.add_argument("--train-rows", type=int, default=1500)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", default="e053f9e")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import numpy as np
    import pyarrow.parquet as pq

    from bertbatch.assets import orange_table
    from bertbatch.machine import cpu_flags

    flags = cpu_flags()
    bf16_units = any(f in flags for f in ("amx_bf16", "avx512_bf16"))
    names = {"r8": ("r8-train", "r8-test"), "20ng": ("20ng-train", "20ng-test")}[args.dataset]
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-speed-"))
    rng = np.random.default_rng(args.seed)
    train, test = orange_table(names[0]), orange_table(names[1])
    labels = tuple(sorted(set(train["label"].to_pylist())))
    train = train.take(np.sort(rng.choice(train.num_rows, min(args.train_rows, train.num_rows), replace=False)))
    test = test.take(np.sort(rng.choice(test.num_rows, min(args.test_rows, test.num_rows), replace=False)))
    pq.write_table(train, scratch / "train.parquet")
    pq.write_table(test, scratch / "test.parquet")
    before = common.extract(args.before, scratch / "before")
    variants = {"before": (before, False, {}), "after": (REPO, False, {}),
                "after, no length groups": (REPO, True, {})}
    if bf16_units:
        variants["after, bf16"] = (REPO, False, {"precision": "bf16"})
    machine = {"cpu": common.cpu_name(), "cpus": os.cpu_count(),
               "isa": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))), "commit": common.git_commit()}
    rows = []
    for round_ in range(args.rounds):
        for name, (code, no_groups, extra) in variants.items():
            kwargs = {"data": str(scratch / "train.parquet"), "output": str(scratch / f"m-{round_}-{len(rows)}"),
                      "base_model": "minilm-l6", "epochs": args.epochs, "batch_size": args.batch_size,
                      "max_length": args.max_length, "lr": 1e-4, "seed": args.seed, "labels": labels,
                      "test_data": str(scratch / "test.parquet"), "early_stopping_patience": 10, "quiet": True, **extra}
            result = run_variant(code, kwargs, no_groups)
            train_figures = result["train"]
            test_metrics = train_figures["test_metrics"]
            record = {"bench": "train_speed", "at": common.now(), "variant": name, "round": round_,
                      "dataset": args.dataset, "train_rows": train_figures["rows"]["train"],
                      "test_rows": train_figures["rows"].get("test"), "epochs": args.epochs,
                      "batch_size": args.batch_size, "max_length": args.max_length,
                      "wall_s": round(result["wall"], 1), "train_s": train_figures["seconds"],
                      "train_rows_per_s": round(train_figures["rows"]["train"] * args.epochs / result["wall"], 1),
                      "accuracy": round(test_metrics["accuracy"], 4), "macro_f1": round(test_metrics["macro_f1"], 4),
                      "precision": train_figures.get("precision"), "load_before": result["load_before"],
                      "load_after": result["load_after"], "machine": machine,
                      "code": args.before if code is before else "this tree"}
            common.append_jsonl("train_speed", record)
            print(json.dumps(record), flush=True)
            rows.append([name, round_, record["wall_s"], record["train_rows_per_s"], record["accuracy"],
                         record["macro_f1"], f"{record['load_before']}-{record['load_after']}"])
    print(common.markdown_table(["variant", "round", "train command, s", "train rows x epochs / s", "test accuracy",
                                 "macro-F1", "load avg"], rows))


if __name__ == "__main__":
    main()
