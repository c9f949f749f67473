"""The real packaged MiniLM end to end: fine-tune on SMS Spam, export, score. `make test-slow` (minutes)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from bertbatch import Scorer, export_onnx, fine_tune, score_file
from bertbatch.assets import sms_spam_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sms_model(tmp_path_factory):
    """MiniLM fine-tuned on 1,500 SMS rows; tested on 1,000 other rows it never saw."""
    tmp = tmp_path_factory.mktemp("sms")
    table = sms_spam_table()
    order = np.random.default_rng(0).permutation(table.num_rows)
    pq.write_table(table.take(np.sort(order[:1500])), tmp / "train.parquet")
    pq.write_table(table.take(np.sort(order[1500:2500])), tmp / "test.parquet")
    start = time.time()
    manifest = fine_tune(tmp / "train.parquet", tmp / "model", test_data=str(tmp / "test.parquet"),
                         base_model="minilm-l6", epochs=3, lr=1e-4, quiet=True)
    metrics = manifest["train"]["test_metrics"]
    print(f"\nfine-tune: {time.time() - start:.0f}s, test accuracy {metrics['accuracy']:.4f}, "
          f"spam F1 {metrics['per_class']['spam']['f1']:.4f}")
    return tmp / "model", manifest, tmp


def test_minilm_sms_spam_reaches_target_accuracy(sms_model):
    _, manifest, _ = sms_model
    metrics = manifest["train"]["test_metrics"]
    assert metrics["n"] == 1000
    assert metrics["accuracy"] >= 0.97
    assert metrics["per_class"]["spam"]["f1"] >= 0.90


def test_minilm_export_parity_and_scoring_matches_pytorch(sms_model):
    model, _, tmp = sms_model
    section = export_onnx(model, validate=str(tmp / "test.parquet"))
    assert section["graphs"]["fp32"]["parity"]["max_abs_logit_delta"] <= 1e-4
    assert section["graphs"]["int8"]["parity"]["macro_f1_drop"] <= 0.01
    texts = pq.read_table(tmp / "test.parquet")["text"].to_pylist()[:300]
    fp32 = [r["label"] for r in Scorer(model, graph="fp32").predict(texts)]
    torch = [r["label"] for r in Scorer(model, graph="torch").predict(texts)]
    assert fp32 == torch
    summary = score_file(tmp / "test.parquet", tmp / "scored.parquet", model, keep=("id", "text"))
    assert summary["rows_written"] == 1000 and summary["graph"] == "int8"
