"""Calibration: temperature fitted at the end of train and by `calibrate`, applied by `score`, measured by `eval`;
`--min-score` abstention.

The model is trained on clean labels and validated and tested on rows whose labels are 25% flipped (annotators
who disagree); `calibrate` refits it on a domain with 40% flipped, where the model is over-confident (T > 1).
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bertbatch import Scorer, fine_tune, score_file
from bertbatch.cli import cli
from bertbatch.errors import InputError
from helpers import make_texts, write_parquet

FLIP = {"pos": "neg", "neg": "pos"}


def noisy_rows(n: int, seed: int, rate: float = 0.25) -> tuple[list[str], list[str]]:
    texts, labels = make_texts(n, seed)
    rng = random.Random(seed + 1000)
    return texts, [FLIP[label] if rng.random() < rate else label for label in labels]


def noisy_file(path, n: int, seed: int, rate: float = 0.25):
    texts, labels = noisy_rows(n, seed, rate)
    return write_parquet(path, id=list(range(n)), text=texts, label=labels)


def ece(probs: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error on the top label, computed here independently of bertbatch."""
    confidence, correct = probs.max(1), probs.argmax(1) == truth
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence >= lo) & ((confidence < hi) if hi < 1 else (confidence <= hi))
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("calibrated")
    texts, labels = make_texts(80, seed=11)
    train = write_parquet(root / "train.parquet", text=texts, label=labels)
    out = root / "model"
    fine_tune(train, out, base_model=tiny_base, validation_data=str(noisy_file(root / "val.parquet", 120, 1)),
              test_data=str(noisy_file(root / "test.parquet", 60, 2)), epochs=8, lr=3e-3, batch_size=8,
              early_stopping_patience=8, quiet=True)
    return out


@pytest.fixture
def model(tmp_path, calibrated):
    """A private copy: tests that recalibrate rewrite bertbatch.json."""
    path = tmp_path / "model"
    shutil.copytree(calibrated, path)
    return path


def test_train_fits_a_temperature_that_lowers_ece_on_held_out_rows(tmp_path, calibrated):
    record = json.loads((calibrated / "bertbatch.json").read_text())["calibration"]
    assert record["method"] == "temperature" and record["temperature"] != pytest.approx(1, abs=0.05), record
    assert record["rows"] == 120 and "validation" in record["fitted_on"]
    assert record["after"]["nll"] <= record["before"]["nll"]

    texts, labels = noisy_rows(300, seed=7)  # rows neither training nor calibration saw
    truth = np.array([["neg", "pos"].index(label) for label in labels])
    raw = Scorer(calibrated, calibration="none").predict(texts)
    calibrated_rows = Scorer(calibrated).predict(texts)
    as_array = lambda rows: np.array([[r["probs"]["neg"], r["probs"]["pos"]] for r in rows])  # noqa: E731
    ece_raw, ece_calibrated = ece(as_array(raw), truth), ece(as_array(calibrated_rows), truth)
    assert ece_calibrated < ece_raw, (ece_raw, ece_calibrated)
    assert [r["label"] for r in raw] == [r["label"] for r in calibrated_rows]  # a temperature keeps every argmax


def test_score_applies_the_recorded_temperature_and_none_gives_the_raw_softmax(tmp_path, calibrated):
    texts, _ = make_texts(40, seed=5)
    src = write_parquet(tmp_path / "in.parquet", text=texts)
    temperature = json.loads((calibrated / "bertbatch.json").read_text())["calibration"]["temperature"]
    outputs = {}
    for mode in ("auto", "none"):
        out = tmp_path / f"{mode}.parquet"
        result = CliRunner().invoke(cli, ["score", str(calibrated), str(src), "-o", str(out), "--probs", "--logits",
                                          "--calibration", mode, "--silent"])
        assert result.exit_code == 0, result.output
        outputs[mode] = pq.read_table(out).to_pydict()
    for mode, scale in (("auto", temperature), ("none", 1.0)):
        table = outputs[mode]
        logits = np.array(table["logits"], dtype=np.float64)
        expected = softmax(logits / scale)
        probs = np.array([table["prob_neg"], table["prob_pos"]]).T
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(table["score"], expected.max(1), rtol=1e-5, atol=1e-6)
    assert outputs["auto"]["logits"] == outputs["none"]["logits"]  # --logits stays raw
    assert outputs["auto"]["label"] == outputs["none"]["label"]
    assert not np.allclose(outputs["auto"]["score"], outputs["none"]["score"])


def test_min_score_abstains_with_the_reason_and_counts_the_rows(tmp_path, calibrated):
    texts, _ = make_texts(60, seed=6)
    texts[3] = ""  # an error row stays an error row, not an abstention
    src = write_parquet(tmp_path / "in.parquet", text=texts)
    plain = score_file(src, tmp_path / "plain.parquet", calibrated, probs=True)
    scores = np.array(pq.read_table(tmp_path / "plain.parquet")["score"].to_pylist(), dtype=object)
    cut = float(np.median([s for s in scores if s is not None]))
    summary = score_file(src, tmp_path / "held.parquet", calibrated, probs=True, min_score=cut)
    held = pq.read_table(tmp_path / "held.parquet").to_pydict()

    below = [i for i, s in enumerate(scores) if s is not None and np.float32(s) < np.float32(cut)]
    assert below and len(below) < len(texts) - 1
    for i in below:
        assert held["label"][i] is None
        assert held["error"][i] == f"score {held['score'][i]:.4g} below --min-score {cut:g}"
        assert held["prob_pos"][i] is not None and held["score"][i] == scores[i]  # probabilities kept
    kept = [i for i in range(len(texts)) if i not in below and i != 3]
    assert all(held["label"][i] is not None and held["error"][i] is None for i in kept)
    assert held["error"][3] == "empty text"
    assert summary["rows_abstained"] == len(below) and plain["rows_abstained"] == 0
    assert summary["rows_with_error"] == 1 and summary["rows_scored"] == len(texts) - 1
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_rejected"] == len(texts)

    result = CliRunner().invoke(cli, ["score", str(calibrated), str(src), "-o", str(tmp_path / "cli.csv"),
                                      "--min-score", str(cut)])
    assert result.exit_code == 0, result.output
    assert f"{len(below):,} abstained (below --min-score)" in result.output


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_min_score_outside_zero_to_one_is_refused(tmp_path, calibrated, value):
    src = write_parquet(tmp_path / "in.parquet", text=["a fine day"])
    result = CliRunner().invoke(cli, ["score", str(calibrated), str(src), "-o", str(tmp_path / "o.csv"),
                                      "--min-score", value])
    assert result.exit_code == 1 and "--min-score must be between 0 and 1" in result.output


def test_calibrate_command_fits_on_new_data_and_records_it(tmp_path, model):
    # a new domain where 40% of labels disagree with the training ones: the model is over-confident there
    data = noisy_file(tmp_path / "domain.parquet", 150, seed=21, rate=0.4)
    before = json.loads((model / "bertbatch.json").read_text())["calibration"]["temperature"]
    result = CliRunner().invoke(cli, ["calibrate", str(model), str(data)])
    assert result.exit_code == 0, result.output
    record = json.loads((model / "bertbatch.json").read_text())["calibration"]
    assert record["rows"] == 150 and str(data) in record["fitted_on"]
    assert record["temperature"] != before and record["temperature"] > 1, record
    texts, labels = noisy_rows(300, seed=22, rate=0.4)  # held-out rows of that domain
    truth = np.array([["neg", "pos"].index(label) for label in labels])
    probs = lambda **kw: np.array([[r["probs"]["neg"], r["probs"]["pos"]] for r in Scorer(model, **kw).predict(texts)])  # noqa: E731
    assert ece(probs(), truth) < ece(probs(calibration="none"), truth)
    assert record["after"]["nll"] <= record["before"]["nll"]
    assert "temperature" in result.output and "recorded in" in result.output
    text = make_texts(1, seed=3)[0][0]
    row = Scorer(model, logits=True).predict([text])[0]
    z = np.array(row["logits"], dtype=np.float64)
    assert row["score"] == pytest.approx(softmax(z[None] / record["temperature"]).max(), rel=1e-5)


def test_a_changed_calibration_refuses_resume(tmp_path, model):
    texts, _ = make_texts(30, seed=8)
    src = write_parquet(tmp_path / "in.parquet", text=texts)
    out = tmp_path / "out"
    score_file(src, out, model, rows_per_part=10)
    from bertbatch.calibrate import calibrate

    calibrate(model, noisy_file(tmp_path / "domain.parquet", 80, seed=31))
    with pytest.raises(InputError, match="Cannot resume .*calibration"):
        score_file(src, out, model, rows_per_part=10, resume=True)
    with pytest.raises(InputError, match=r"Cannot resume .*--calibration \(auto -> none\)"):
        score_file(src, out, model, rows_per_part=10, resume=True, calibration="none")


def test_eval_writes_ece_brier_risk_coverage_and_a_reliability_diagram(tmp_path, calibrated):
    data = noisy_file(tmp_path / "eval.parquet", 200, seed=41)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["eval", str(calibrated), str(data), "-o", str(out),
                                      "--min-scores", "0.5,0.9,0.99"])
    assert result.exit_code == 0, result.output
    figures = next(iter(json.loads((out / "metrics.json").read_text())["graphs"].values()))
    table = pq.read_table(data).to_pydict()
    truth = np.array([["neg", "pos"].index(label) for label in table["label"]])
    rows = Scorer(calibrated, logits=True).predict(table["text"])
    logits = np.array([r["logits"] for r in rows], dtype=np.float64)
    temperature = json.loads((calibrated / "bertbatch.json").read_text())["calibration"]["temperature"]
    raw, scaled = softmax(logits), softmax(logits / temperature)
    assert figures["ece_raw"] == pytest.approx(ece(raw, truth), abs=1e-6)
    assert figures["ece"] == pytest.approx(ece(scaled, truth), abs=1e-6)
    onehot = np.eye(2)[truth]
    assert figures["brier_raw"] == pytest.approx(((raw - onehot) ** 2).sum(1).mean(), abs=1e-6)
    assert figures["brier"] == pytest.approx(((scaled - onehot) ** 2).sum(1).mean(), abs=1e-6)
    assert [r["min_score"] for r in figures["risk_coverage"]] == [0.5, 0.9, 0.99]
    for r in figures["risk_coverage"]:
        kept = scaled.max(1).astype(np.float32) >= np.float32(r["min_score"])
        assert r["coverage"] == pytest.approx(kept.mean())
        assert r["accuracy"] == (pytest.approx((scaled.argmax(1) == truth)[kept].mean()) if kept.any() else None)
    for target, best in figures["min_score_for_accuracy"].items():
        if best is not None:
            kept = scaled.max(1).astype(np.float32) >= np.float32(best["min_score"])
            assert (scaled.argmax(1) == truth)[kept].mean() >= float(target)
    png = out / "reliability_" f"{next(iter(json.loads((out / 'metrics.json').read_text())['graphs']))}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "ECE raw" in summary and "Risk-coverage" in summary and "--min-score" in summary


def test_multi_label_training_records_one_temperature_per_label(tmp_path, tiny_base):
    texts, labels = make_texts(60, seed=13)
    tags = [f"{label},long" if len(t.split()) > 10 else label for t, label in zip(texts, labels)]
    data = write_parquet(tmp_path / "multi.parquet", text=texts, label=tags)
    out = tmp_path / "multi"
    fine_tune(data, out, base_model=tiny_base, multi_label=True, epochs=2, lr=3e-3, batch_size=8, quiet=True)
    record = json.loads((out / "bertbatch.json").read_text())["calibration"]
    assert set(record["temperatures"]) == {"long", "neg", "pos"} and record["temperature"] is None
    row = Scorer(out, logits=True).predict([texts[0]])[0]
    names = list(row["probs"])  # the model's label order, as the logits are
    temperatures = np.array([record["temperatures"][name] for name in names])
    z = np.array(row["logits"], dtype=np.float64)
    expected = 1 / (1 + np.exp(-z / temperatures))
    np.testing.assert_allclose([row["probs"][n] for n in names], expected, rtol=1e-5)
