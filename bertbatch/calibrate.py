"""Temperature scaling: make `score` a calibrated probability, and measure how calibrated it is.

A fine-tuned classifier's softmax is usually over-confident. Dividing the logits by one temperature T, fitted
by minimizing the negative log-likelihood on held-out labeled rows, fixes most of it without changing any
argmax (Guo et al. 2017). Multi-label heads get one temperature per label (each sigmoid is its own binary
problem). The fit is recorded in `bertbatch.json` under `calibration`; `Scorer` applies it after the graph,
so graphs, export gates and batch invariance are untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .manifest import update_manifest
from .temperature import METHOD

ECE_BINS = 15
# log T is searched on [LOG_T_MIN, LOG_T_MAX]: T from 0.05 to 20 (a fit at the edge is reported, not extended)
LOG_T_MIN, LOG_T_MAX = np.log(0.05), np.log(20.0)


# ------------------------------------------------------------------------------------------------ measures
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


def probabilities(logits: np.ndarray, multi_label: bool, temperature=None) -> np.ndarray:
    """softmax (or per-label sigmoid) of logits / temperature; no temperature = the raw probabilities."""
    scaled = logits if temperature is None else logits / np.asarray(temperature, dtype=np.float64)
    return sigmoid(scaled) if multi_label else softmax(scaled)


def nll(logits: np.ndarray, targets: np.ndarray, multi_label: bool, temperature=1.0) -> float:
    """Mean negative log-likelihood of the targets (per row; per row and label for multi-label)."""
    z = logits.astype(np.float64) / np.asarray(temperature, dtype=np.float64)
    if multi_label:
        y = targets.astype(np.float64)
        return float(np.mean(np.logaddexp(0, z) - y * z))  # BCE with logits, stable
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(z)), targets.astype(int)].mean())


def confidence_and_correct(probs: np.ndarray, targets: np.ndarray, multi_label: bool):
    """(confidence, correct) per decision: the top label's probability and whether it is the true label; for
    multi-label, every (row, label) decision at 0.5: max(p, 1 - p) and whether the decision is right."""
    if multi_label:
        decided = probs >= 0.5
        return np.maximum(probs, 1 - probs).ravel(), (decided == targets.astype(bool)).ravel()
    return probs.max(axis=1), probs.argmax(axis=1) == targets.astype(int)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, multi_label: bool, bins: int = ECE_BINS) -> float:
    """ECE: |accuracy - mean confidence| per equal-width confidence bin, weighted by the bin's share of rows."""
    confidence, correct = confidence_and_correct(probs, targets, multi_label)
    if not len(confidence):
        return float("nan")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def reliability(probs: np.ndarray, targets: np.ndarray, multi_label: bool, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin: its range, rows, mean confidence and accuracy (the reliability diagram's points)."""
    confidence, correct = confidence_and_correct(probs, targets, multi_label)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        out.append({"low": b / bins, "high": (b + 1) / bins, "rows": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()) if inside.any() else None,
                    "accuracy": float(correct[inside].mean()) if inside.any() else None})
    return out


def brier(probs: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Brier score: mean squared distance to the one-hot truth, summed over classes (per label for multi-label)."""
    if multi_label:
        return float(np.mean((probs - targets.astype(np.float64)) ** 2))
    onehot = np.zeros_like(probs, dtype=np.float64)
    onehot[np.arange(len(probs)), targets.astype(int)] = 1
    return float(np.mean(((probs - onehot) ** 2).sum(axis=1)))


# ------------------------------------------------------------------------------------------------ fitting
def _golden_min(f, lo: float, hi: float, iterations: int = 80) -> float:
    """Minimum of a unimodal f on [lo, hi] by golden-section search (NLL in log T is convex)."""
    ratio = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_temperature(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> np.ndarray:
    """The temperature(s) minimizing NLL: shape (1,) for single-label, (k,) one per label for multi-label."""
    if multi_label:
        return np.array([np.exp(_golden_min(lambda t: nll(logits[:, [j]], targets[:, [j]], True, np.exp(t)),
                                            LOG_T_MIN, LOG_T_MAX)) for j in range(logits.shape[1])])
    return np.array([np.exp(_golden_min(lambda t: nll(logits, targets, False, np.exp(t)), LOG_T_MIN, LOG_T_MAX))])


def fit_record(logits: np.ndarray, targets: np.ndarray, labels: list[str], multi_label: bool, fitted_on: str) -> dict:
    """Fit on labeled logits; the `calibration` section of bertbatch.json, with NLL/ECE/Brier before and after."""
    if len(logits) == 0:
        raise InputError(f"No labeled rows to fit the calibration on ({fitted_on}).")
    temperature = fit_temperature(logits, targets, multi_label)
    raw, calibrated = probabilities(logits, multi_label), probabilities(logits, multi_label, temperature)
    record = {
        "method": METHOD,
        "temperature": float(temperature[0]) if not multi_label else None,
        "temperatures": dict(zip(labels, map(float, temperature))) if multi_label else None,
        "fitted_on": fitted_on,
        "rows": int(len(logits)),
        "before": calibration_measures(logits, targets, multi_label, None, raw),
        "after": calibration_measures(logits, targets, multi_label, temperature, calibrated),
    }
    return record


def calibration_measures(logits, targets, multi_label: bool, temperature=None, probs=None) -> dict:
    probs = probabilities(logits, multi_label, temperature) if probs is None else probs
    return {"nll": nll(logits, targets, multi_label, 1.0 if temperature is None else temperature),
            "ece": expected_calibration_error(probs, targets, multi_label),
            "brier": brier(probs, targets, multi_label)}


# ------------------------------------------------------------------------------------------------ library
def calibrate(model_dir: str | Path, data: str | Path, text_column: str = "text", label_column: str = "label",
              label_delimiter: str = ",", **score_options) -> dict:
    """Fit temperature scaling for MODEL_DIR on labeled `data` (a new domain, or a model trained before
    calibration existed) and record it in its bertbatch.json; returns the record.

    The raw logits come from the graph `score` runs by default (`score_options` are ScoreConfig fields)."""
    from .data import read_eval_data
    from .modeldir import ModelDir
    from .score import Scorer

    model = ModelDir.open(model_dir)
    labeled, _ = read_eval_data(data, model, text_column, label_column, label_delimiter)
    scorer = Scorer(model_dir, calibration="none", **score_options)
    logits = scorer.logits(labeled.texts).logits
    record = fit_record(logits, labeled.targets, model.labels, model.multi_label,
                        f"{data} (bertbatch calibrate, graph {scorer.model.graph_key(scorer.graph_file)})")
    update_manifest(model_dir, calibration=record)
    return record
