"""Evaluate a model directory on labeled data: metrics per graph, confusion matrices, a Markdown summary.

`evaluate` scores the texts with each requested graph (fp32/int8/fp16/torch, or `default`: the graph the
scorer picks for the provider) and returns the report; with `output_dir` it also writes metrics.json,
confusion_<graph>.csv/.png and summary.md there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .calibrate import brier, confidence_and_correct, expected_calibration_error, probabilities, reliability
from .config import EvalConfig
from .data import LabeledData, read_eval_data
from .errors import require
from .manifest import write_json_atomic
from .metrics import metrics_from_logits
from .modeldir import ModelDir

log = logging.getLogger(__name__)

DEFAULT_GRAPH = "default"
MIN_SCORES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)  # the risk-coverage table's --min-score values
TARGET_ACCURACIES = (0.9, 0.95, 0.99)
EXCLUDED_REASON = "null or empty text"


def evaluate(model_dir: str | Path, data: str | Path, output_dir: str | Path | None = None,
             config: EvalConfig | None = None, **overrides) -> dict:
    """Metrics of each of `config.graphs` on labeled `data` (overrides: EvalConfig fields).

    Rows with null or empty text are counted in `rows_excluded` and left out of every metric.
    """
    config = replace(config or EvalConfig(), **overrides)
    threshold = config.threshold
    model = ModelDir.open(model_dir)
    labeled, excluded = read_eval_data(data, model, config.text_column, config.label_column, config.label_delimiter)
    report = {
        "model": str(model.path),
        "model_name": model.name,
        "data": str(data),
        "labels": model.labels,
        "multi_label": model.multi_label,
        "threshold": threshold if model.multi_label else None,
        "rows": len(labeled) + excluded,
        "rows_evaluated": len(labeled),
        "rows_excluded": excluded,
        "excluded_reason": EXCLUDED_REASON,
        "graphs": {},
    }
    logits_by_graph = {}
    for graph in config.graphs or (DEFAULT_GRAPH,):
        key, logits, figures = _score_graph(model_dir, graph, labeled, threshold, config.score_options(),
                                            config.min_scores or MIN_SCORES)
        if key in report["graphs"]:
            log.info("Graph %s asked twice (as %s); evaluated once.", key, graph)
            continue
        logits_by_graph[key] = logits
        report["graphs"][key] = figures
    _add_agreement(report, logits_by_graph, model.multi_label, threshold)
    report["summary"] = summary_markdown(report)
    if output_dir is not None:
        write_report(report, output_dir)
    return report


# ------------------------------------------------------------------------------------------------ data
# ------------------------------------------------------------------------------------------------ metrics
def _score_graph(model_dir, graph: str, labeled: LabeledData, threshold: float, score_options: dict,
                 min_scores=MIN_SCORES):
    from .score import Scorer

    scorer = Scorer(model_dir, graph=None if graph == DEFAULT_GRAPH else graph, **score_options)
    path = scorer.graph_file
    started = time.perf_counter()
    logits = scorer.logits(labeled.texts).logits
    seconds = time.perf_counter() - started
    figures = graph_metrics(logits, labeled.targets, scorer.model.labels, scorer.model.multi_label, threshold)
    figures.update(calibration_figures(logits, labeled.targets, scorer.model.multi_label, scorer.temperature, min_scores))
    figures.update(
        file=scorer.graph,
        provider=scorer.runner.provider,
        truncation=scorer.truncation_label,  # the model's recorded strategy unless --truncation said otherwise
        seconds=round(seconds, 3),
        rows_per_s=round(len(labeled) / seconds, 1) if seconds else None,
    )
    return scorer.model.graph_key(path), logits, figures


def graph_metrics(logits: np.ndarray, targets: np.ndarray, labels: list[str], multi_label: bool, threshold=0.5) -> dict:
    """bertbatch.metrics figures, plus for multi-label micro-F1's per-label counts and F1-optimal thresholds."""
    figures = metrics_from_logits(logits, targets, labels, multi_label, threshold)
    if multi_label:
        probs = 1 / (1 + np.exp(-logits))
        figures["confusion"] = _label_counts(targets.astype(int), (probs >= threshold).astype(int), labels)
        figures["best_thresholds"] = best_thresholds(probs, targets.astype(int), labels)
    return figures


def calibration_figures(logits: np.ndarray, targets: np.ndarray, multi_label: bool, temperature, min_scores) -> dict:
    """ECE and Brier of the raw and the calibrated probabilities (the same when the model has no calibration),
    the calibrated reliability bins, and the risk-coverage table of --min-score values."""
    raw = probabilities(logits, multi_label)
    calibrated = raw if temperature is None else probabilities(logits, multi_label, temperature)
    return {
        "calibration": None if temperature is None else [float(t) for t in temperature],
        "ece_raw": expected_calibration_error(raw, targets, multi_label),
        "ece": expected_calibration_error(calibrated, targets, multi_label),
        "brier_raw": brier(raw, targets, multi_label),
        "brier": brier(calibrated, targets, multi_label),
        "reliability": {"raw": reliability(raw, targets, multi_label),
                        "calibrated": reliability(calibrated, targets, multi_label)},
        **risk_coverage(calibrated, targets, multi_label, min_scores),
    }


def risk_coverage(probs: np.ndarray, targets: np.ndarray, multi_label: bool, min_scores=MIN_SCORES,
                  targets_accuracy=TARGET_ACCURACIES) -> dict:
    """What `score --min-score P` would keep on this data: per P, the share of rows kept and their accuracy
    (subset accuracy for multi-label); per target accuracy, the smallest observed score threshold reaching it."""
    from .score import confidence

    conf = confidence(probs.astype(np.float32), multi_label)
    if multi_label:
        correct = ((probs >= 0.5) == targets.astype(bool)).all(axis=1)
    else:
        correct = confidence_and_correct(probs, targets, False)[1]
    table = []
    for p in min_scores:
        kept = conf >= np.float32(p)
        table.append({"min_score": float(p), "coverage": float(kept.mean()) if len(kept) else 0.0,
                      "rows_kept": int(kept.sum()), "accuracy": float(correct[kept].mean()) if kept.any() else None})
    return {"risk_coverage": table, "min_score_for_accuracy": _thresholds_for(conf, correct, targets_accuracy)}


def _thresholds_for(conf: np.ndarray, correct: np.ndarray, accuracies) -> dict:
    """Per target accuracy: the smallest threshold (one of the observed scores) whose kept rows reach it."""
    order = np.argsort(-conf, kind="stable")
    sorted_conf, hits = conf[order], np.cumsum(correct[order])
    # only where a threshold can cut: the last row of each run of equal scores
    ends = np.r_[np.flatnonzero(np.diff(sorted_conf)), len(conf) - 1] if len(conf) else np.zeros(0, int)
    accuracy = hits[ends] / (ends + 1)
    out = {}
    for target in accuracies:
        reach = np.flatnonzero(accuracy >= target)
        if not len(reach):
            out[str(target)] = None
            continue
        best = ends[reach[-1]]  # the lowest threshold: the most rows kept at that accuracy
        out[str(target)] = {"min_score": float(sorted_conf[best]), "coverage": float((best + 1) / len(conf)),
                            "accuracy": float(accuracy[reach[-1]])}
    return out


def _label_counts(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    from sklearn.metrics import multilabel_confusion_matrix

    matrices = multilabel_confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    return {
        name: {"tp": int(m[1, 1]), "fp": int(m[0, 1]), "fn": int(m[1, 0]), "tn": int(m[0, 0])}
        for name, m in zip(labels, matrices)
    }


def best_thresholds(probs: np.ndarray, y_true: np.ndarray, labels: list[str]) -> dict:
    """Per label, the probability threshold with the highest F1 on this data (None when a label has no positives)."""
    from sklearn.metrics import precision_recall_curve

    out = {}
    for j, name in enumerate(labels):
        if not y_true[:, j].any():
            out[name] = {"threshold": None, "f1": None}
            continue
        precision, recall, cuts = precision_recall_curve(y_true[:, j], probs[:, j])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = int(np.argmax(f1))
        out[name] = {"threshold": float(cuts[best]), "f1": float(f1[best])}
    return out


def _predictions(logits: np.ndarray, multi_label: bool, threshold: float) -> np.ndarray:
    return (1 / (1 + np.exp(-logits)) >= threshold) if multi_label else logits.argmax(1)


def _add_agreement(report: dict, logits_by_graph: dict, multi_label: bool, threshold: float) -> None:
    """With several graphs: share of rows on which each graph predicts what the first one does."""
    if len(logits_by_graph) < 2:
        return
    keys = list(logits_by_graph)
    reference = _predictions(logits_by_graph[keys[0]], multi_label, threshold)
    for key in keys:
        same = _predictions(logits_by_graph[key], multi_label, threshold) == reference
        rate = same.all(axis=1).mean() if multi_label else same.mean()
        report["graphs"][key]["agreement"] = {"reference": keys[0], "rate": float(rate)}


# ------------------------------------------------------------------------------------------------ report
def summary_markdown(report: dict) -> str:
    """A short Markdown summary: rows, exclusions, one line per graph, per-class F1 side by side."""
    graphs = report["graphs"]
    keys = list(graphs)
    lines = [f"# Evaluation of {report['model_name']} on {Path(report['data']).name}", ""]
    lines.append(f"{report['rows_evaluated']:,} of {report['rows']:,} rows evaluated; labels {', '.join(report['labels'])}.")
    if report["rows_excluded"]:
        rows = "row" if report["rows_excluded"] == 1 else "rows"
        lines.append(f"{report['rows_excluded']:,} {rows} excluded from every metric: {report['excluded_reason']}.")
    if report["multi_label"]:
        lines.append(f"Multi-label, decision threshold {report['threshold']}.")
    lines += ["", *_graph_table(report, keys), "", *_class_table(report, keys)]
    if report["multi_label"]:
        lines += ["", *_threshold_table(graphs[keys[0]], keys[0])]
    lines += ["", *_calibration_table(report, keys), "", *_risk_coverage_table(graphs[keys[0]], keys[0])]
    return "\n".join(lines) + "\n"


def _calibration_table(report: dict, keys: list[str]) -> list[str]:
    head = ["graph", "temperature", "ECE raw", "ECE", "Brier raw", "Brier"]
    lines = ["Calibration (ECE: 15 equal-width bins on the top label's probability; lower is better):", "",
             _row(head), _row(["---"] * len(head))]
    for key in keys:
        g = report["graphs"][key]
        temperature = "none" if g["calibration"] is None else ", ".join(f"{t:.3f}" for t in g["calibration"])
        lines.append(_row([key, temperature, f"{g['ece_raw']:.4f}", f"{g['ece']:.4f}", f"{g['brier_raw']:.4f}",
                           f"{g['brier']:.4f}"]))
    return lines


def _risk_coverage_table(figures: dict, key: str) -> list[str]:
    lines = [f"Risk-coverage ({key}): rows `score --min-score P` keeps on this data, and their accuracy:", "",
             _row(["--min-score", "kept", "rows kept", "accuracy of kept"]), _row(["---"] * 4)]
    for r in figures["risk_coverage"]:
        accuracy = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(_row([f"{r['min_score']:g}", f"{r['coverage']:.2%}", f"{r['rows_kept']:,}", accuracy]))
    lines += ["", _row(["target accuracy", "smallest --min-score reaching it", "kept"]), _row(["---"] * 3)]
    for target, best in figures["min_score_for_accuracy"].items():
        lines.append(_row([target, "not reached" if best is None else f"{best['min_score']:.4f}",
                           "" if best is None else f"{best['coverage']:.2%}"]))
    return lines


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _graph_table(report: dict, keys: list[str]) -> list[str]:
    multi = report["multi_label"]
    head = ["graph", "subset accuracy" if multi else "accuracy", *(["micro-F1"] if multi else []), "macro-F1",
            "weighted-F1", "rows/s"]
    compare = len(keys) > 1
    if compare:
        head.append(f"agreement with {keys[0]}")
    lines = [_row(head), _row(["---"] * len(head))]
    for key in keys:
        g = report["graphs"][key]
        accuracy = g["subset_accuracy"] if multi else g["accuracy"]
        cells = [key, f"{accuracy:.4f}", *([f"{g['micro_f1']:.4f}"] if multi else []), f"{g['macro_f1']:.4f}",
                 f"{g['weighted_f1']:.4f}", f"{g['rows_per_s'] or 0:,.0f}"]
        if compare:
            cells.append(f"{g['agreement']['rate']:.2%}")
        lines.append(_row(cells))
    return lines


def _class_table(report: dict, keys: list[str]) -> list[str]:
    first = report["graphs"][keys[0]]["per_class"]
    head = ["label", "support", *[f"F1 {k}" for k in keys]]
    lines = [_row(head), _row(["---"] * len(head))]
    for name in report["labels"]:
        f1s = [f"{report['graphs'][k]['per_class'][name]['f1']:.4f}" for k in keys]
        lines.append(_row([name, first[name]["support"], *f1s]))
    return lines


def _threshold_table(figures: dict, key: str) -> list[str]:
    lines = [f"F1-optimal thresholds on this data ({key}):", "", _row(["label", "threshold", "F1 there"]),
             _row(["---"] * 3)]
    for name, best in figures["best_thresholds"].items():
        if best["threshold"] is None:
            lines.append(_row([name, "n/a (no positives)", ""]))
        else:
            lines.append(_row([name, f"{best['threshold']:.3f}", f"{best['f1']:.4f}"]))
    return lines


def write_report(report: dict, output_dir: str | Path) -> dict[str, Path]:
    """metrics.json, summary.md, and confusion_<graph>.csv/.png per graph; returns the files written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out / "metrics.json", "summary": out / "summary.md"}
    write_json_atomic(files["metrics"], {k: v for k, v in report.items() if k != "summary"})
    files["summary"].write_text(report["summary"])
    for key, figures in report["graphs"].items():
        stem = f"confusion_{_file_key(key)}"
        header, names, counts = _confusion_table(figures, report["labels"], report["multi_label"])
        files[f"{key}.csv"] = _write_csv(out / f"{stem}.csv", header, names, counts)
        axes = ("outcome", "label") if report["multi_label"] else ("predicted", "true")
        files[f"{key}.png"] = _plot_confusion(out / f"{stem}.png", key, header[1:], names, counts, axes)
        files[f"{key}.reliability.png"] = _plot_reliability(out / f"reliability_{_file_key(key)}.png", key, figures)
    return files


def _plot_reliability(path: Path, key: str, figures: dict) -> Path:
    """Accuracy against mean confidence per bin, raw and calibrated, beside the diagonal of perfect calibration."""
    require("matplotlib", "eval")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, ece_key, style in (("raw", "ece_raw", "o--"), ("calibrated", "ece", "s-")):
        bins = [b for b in figures["reliability"][name] if b["rows"]]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style,
                label=f"{name} (ECE {figures[ece_key]:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top label's probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability ({key})")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _file_key(key: str) -> str:
    return Path(key).stem if key.endswith(".onnx") else key


def _confusion_table(figures: dict, labels: list[str], multi_label: bool):
    """(header, row names, counts): true x predicted for multi-class, tp/fp/fn/tn per label for multi-label."""
    if multi_label:
        cells = ("tp", "fp", "fn", "tn")
        counts = np.array([[figures["confusion"][name][c] for c in cells] for name in labels])
        return ["label", *cells], labels, counts
    return ["true \\ predicted", *labels], labels, np.array(figures["confusion_matrix"])


def _write_csv(path: Path, header: list[str], names: list[str], counts: np.ndarray) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for name, row in zip(names, counts):
            writer.writerow([name, *map(int, row)])
    return path


def _plot_confusion(path: Path, key: str, columns: list[str], names: list[str], counts: np.ndarray, axes) -> Path:
    require("matplotlib", "eval")
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    size = max(3.0, 0.6 * max(len(columns), len(names)) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(int(value)), ha="center", va="center",
                color="white" if value > counts.max() / 2 else "black")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(f"Confusion ({key})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
