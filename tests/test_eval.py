"""Evaluation: metrics agree with scikit-learn on the same predictions, report files, graphs side by side, CLI."""

from __future__ import annotations

import csv as stdcsv
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from pyarrow import csv

from bertbatch import Scorer
from bertbatch.cli import cli
from bertbatch.errors import EXIT_INPUT, EXIT_MODEL
from bertbatch.evaluate import evaluate
from helpers import make_texts, write_parquet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BLANK_ROWS = (3, 7)


@pytest.fixture(scope="module")
def eval_table(tmp_path_factory):
    """40 labeled rows, two of them with empty or whitespace-only text."""
    texts, labels = make_texts(40, seed=11)
    for i in BLANK_ROWS:
        texts[i] = "" if i == 3 else "   "
    path = tmp_path_factory.mktemp("eval-data") / "labeled.csv"
    csv.write_csv(pa.table({"text": texts, "label": labels}), path)
    return path, texts, labels


@pytest.fixture(scope="module")
def two_graphs(tiny_exported, eval_table, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-report")
    return evaluate(tiny_exported, eval_table[0], out, graphs=("fp32", "int8")), out


def _kept(texts, labels):
    keep = [i for i in range(len(texts)) if i not in BLANK_ROWS]
    return [texts[i] for i in keep], [labels[i] for i in keep]


def test_metrics_agree_with_scikit_learn(tiny_exported, eval_table, two_graphs):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    report, out = two_graphs
    texts, labels = _kept(*eval_table[1:])
    predicted = [r["label"] for r in Scorer(tiny_exported, graph="fp32").predict(texts)]
    names = ["neg", "pos"]
    figures = report["graphs"]["fp32"]
    assert figures["n"] == len(texts) == 38
    assert figures["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert figures["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert figures["weighted_f1"] == pytest.approx(f1_score(labels, predicted, average="weighted"))
    p, r, f, s = precision_recall_fscore_support(labels, predicted, labels=names, zero_division=0)
    for i, name in enumerate(names):
        assert figures["per_class"][name] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    expected = confusion_matrix(labels, predicted, labels=names)
    with open(out / "confusion_fp32.csv") as fh:
        rows = list(stdcsv.reader(fh))
    assert rows[0] == ["true \\ predicted", "neg", "pos"]
    np.testing.assert_array_equal([[int(v) for v in row[1:]] for row in rows[1:]], expected)


def test_report_files_for_each_graph_and_excluded_rows_said(two_graphs):
    report, out = two_graphs
    assert list(report["graphs"]) == ["fp32", "int8"]
    for key in ("fp32", "int8"):
        assert (out / f"confusion_{key}.png").read_bytes()[:8] == PNG_MAGIC
        assert (out / f"confusion_{key}.csv").exists()
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["rows"], saved["rows_evaluated"], saved["rows_excluded"]) == (40, 38, 2)
    assert saved["graphs"]["int8"]["agreement"]["reference"] == "fp32"
    assert 0.9 <= saved["graphs"]["int8"]["agreement"]["rate"] <= 1.0
    summary = (out / "summary.md").read_text()
    assert summary == report["summary"]
    assert "2 rows excluded from every metric: null or empty text" in summary
    for key in ("fp32", "int8"):
        accuracy = report["graphs"][key]["accuracy"]
        assert f"| {key} | {accuracy:.4f} |" in summary


def test_null_text_in_parquet_is_excluded(tiny_exported, tmp_path):
    texts, labels = make_texts(10, seed=12)
    texts[0] = None
    path = write_parquet(tmp_path / "nulls.parquet", text=texts, label=labels)
    report = evaluate(tiny_exported, path, graphs=("fp32",))
    assert (report["rows_excluded"], report["graphs"]["fp32"]["n"]) == (1, 9)


def test_cli_prints_summary_and_writes_report(tiny_exported, eval_table, tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(tiny_exported), str(eval_table[0]), "--graph", "fp32,int8",
                                      "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "| fp32 |" in result.output
    assert "| int8 |" in result.output
    assert "agreement with fp32" in result.output
    assert (tmp_path / "report" / "confusion_int8.png").exists()


@pytest.mark.parametrize(
    "columns, args, message, code",
    [
        ({"text": ["a", "", "b"], "label": ["neg", "pos", "meh"]}, [], "not in the fixed label set ['neg', 'pos']", EXIT_INPUT),
        ({"text": ["a", "", "b"], "label": ["neg", "pos", "meh"]}, [], "bad.parquet, row 3, column 'label'", EXIT_INPUT),
        ({"body": ["a", "b"], "label": ["neg", "pos"]}, [], "Column 'text' not found", EXIT_INPUT),
        ({"text": ["", " "], "label": ["neg", "pos"]}, [], "nothing to evaluate", EXIT_INPUT),
        ({"text": ["a", "b"], "label": ["neg", "pos"]}, ["--graph", "int4"], "--graph must be fp32, int8", EXIT_MODEL),
    ],
)
def test_cli_errors_say_what_to_do(tiny_exported, tmp_path, columns, args, message, code):
    path = write_parquet(tmp_path / "bad.parquet", **columns)
    result = CliRunner().invoke(cli, ["eval", str(tiny_exported), str(path), *args])
    assert result.exit_code == code  # README, "Exit codes": the error class's code
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1  # one line, no traceback
    assert message in result.output


@pytest.fixture(scope="module")
def multi_label_model(tiny_exported, tmp_path_factory):
    """The tiny export relabelled as multi-label (neg, pos as independent sigmoid outputs): no training needed."""
    path = tmp_path_factory.mktemp("multi") / "tiny-multi"
    shutil.copytree(tiny_exported, path, ignore=shutil.ignore_patterns("model_int8.onnx", "model_fp16.onnx"))
    config = json.loads((path / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_multi_label_micro_f1_and_thresholds(multi_label_model, tmp_path):
    from sklearn.metrics import f1_score

    texts, labels = make_texts(30, seed=13)
    tags = [f"{label},pos" if i % 5 == 0 else label for i, label in enumerate(labels)]
    path = tmp_path / "tags.csv"
    csv.write_csv(pa.table({"text": texts, "tags": tags}), path)
    report = evaluate(multi_label_model, path, tmp_path / "out", graphs=("fp32",), label_column="tags")

    logits = Scorer(multi_label_model, graph="fp32").logits(texts).logits
    predicted = (1 / (1 + np.exp(-logits)) >= 0.5).astype(int)
    truth = np.array([[int("neg" in t), int("pos" in t)] for t in tags])
    figures = report["graphs"]["fp32"]
    assert figures["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert figures["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    for j, name in enumerate(["neg", "pos"]):
        best = figures["best_thresholds"][name]
        assert 0 <= best["threshold"] <= 1
        assert best["f1"] >= f1_score(truth[:, j], predicted[:, j]) - 1e-9
        assert figures["confusion"][name]["tp"] == int((truth[:, j] & predicted[:, j]).sum())
    assert "F1-optimal thresholds" in report["summary"]
    assert (tmp_path / "out" / "confusion_fp32.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "out" / "confusion_fp32.csv").read_text().startswith("label,tp,fp,fn,tn")


def test_eval_config_refuses_an_unknown_provider_and_a_zero_budget():
    from bertbatch.config import EvalConfig
    from bertbatch.errors import InputError

    with pytest.raises(InputError, match="--provider must be auto, cuda or cpu; got 'gpu'"):
        EvalConfig(provider="gpu")
    with pytest.raises(InputError, match="--max-tokens must be positive"):
        EvalConfig(max_tokens=0)


def test_evaluate_takes_an_eval_config(tiny_exported, eval_table):
    from bertbatch.config import EvalConfig

    report = evaluate(tiny_exported, eval_table[0], config=EvalConfig(graphs=("fp32",), max_tokens=64))
    assert list(report["graphs"]) == ["fp32"] and report["rows_evaluated"] == 40 - len(BLANK_ROWS)
