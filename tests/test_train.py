"""Fine-tuning: a real Trainer run on the tiny model, freezing, class weights, multi-label, bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from pyarrow import csv

from bertbatch import fine_tune
from bertbatch.cli import cli
from bertbatch.errors import InputError
from helpers import make_texts, write_parquet


def test_tiny_fine_tune_beats_chance(tiny_model):
    manifest = json.loads((tiny_model / "bertbatch.json").read_text())
    assert manifest["labels"] == ["neg", "pos"]
    assert manifest["train"]["test_metrics"]["accuracy"] > 0.75  # chance is 0.5
    assert (tiny_model / "model.safetensors").exists()
    assert not (tiny_model / "pytorch_model.bin").exists()
    assert (tiny_model / "test_split.parquet").exists()


def test_checkpoint_loads_in_transformers_pipeline_with_label_names(tiny_model):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(tiny_model), device="cpu")
    out = clf(["what a wonderful superb day", "an awful terrible boring trip"])
    assert [o["label"] for o in out] == ["pos", "neg"]


def _params(model_dir):
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _base_params(base):
    from safetensors.numpy import load_file

    return {f"bert.{k}": v for k, v in load_file(f"{base}/model.safetensors").items()}


@pytest.mark.parametrize(
    "mode, frozen_prefixes, trained_prefixes",
    [
        ("embeddings", ["bert.embeddings."], ["bert.encoder.layer.0.", "classifier."]),
        ("layers:1", ["bert.embeddings.", "bert.encoder.layer.0."], ["bert.encoder.layer.1.", "classifier."]),
        ("encoder", ["bert.embeddings.", "bert.encoder."], ["bert.pooler.", "classifier."]),
    ],
)
def test_freeze_modes_keep_frozen_weights_unchanged(tmp_path, tiny_base, sentiment_csv, mode, frozen_prefixes, trained_prefixes):
    out = tmp_path / "m"
    manifest = fine_tune(sentiment_csv, out, base_model=tiny_base, epochs=1, lr=1e-2, batch_size=16, freeze=mode, quiet=True)
    assert manifest["train"]["frozen_parameters"] > 0
    after, before = _params(out), _base_params(tiny_base)
    frozen = [k for k in after if k.startswith(tuple(frozen_prefixes))]
    trained = [k for k in after if k.startswith(tuple(trained_prefixes)) and k in before]
    assert frozen
    for key in frozen:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    # every trainable tensor present in the base moved; the classifier is new and trained too
    assert trained
    for key in trained:
        assert not np.array_equal(after[key], before[key]), key
    assert any(k.startswith("classifier.") for k in after)


def test_class_weights_change_the_loss_and_favour_the_rare_class(tmp_path, tiny_base):
    texts, labels = make_texts(60, seed=3)
    # 9:1 imbalance: keep every 'pos' row but only a few 'neg' ones
    rows = [(t, l) for i, (t, l) in enumerate(zip(texts, labels)) if l == "pos" or i % 10 == 1]
    path = tmp_path / "imbalanced.parquet"
    write_parquet(path, text=[r[0] for r in rows], label=[r[1] for r in rows])
    from bertbatch import Scorer

    plain = fine_tune(path, tmp_path / "plain", base_model=tiny_base, epochs=1, lr=1e-3, seed=1, quiet=True)
    weighted = fine_tune(path, tmp_path / "w", base_model=tiny_base, epochs=1, lr=1e-3, seed=1, class_weights="auto", quiet=True)
    assert weighted["train"]["config"]["class_weights"] == "auto"
    # same seed and data: only the loss differs
    assert plain["train"]["best_validation"]["eval_loss"] != weighted["train"]["best_validation"]["eval_loss"]
    # and the weighted loss (rare 'neg' weighted ~9x) pushes every text towards the rare class
    texts_all = [r[0] for r in rows]
    p_neg = {name: Scorer(tmp_path / name, graph="torch", probs=True).logits(texts_all).probs[:, 0]
             for name in ("plain", "w")}
    assert p_neg["w"].mean() > p_neg["plain"].mean()


def test_multi_label_from_delimited_strings(tmp_path, tiny_base):
    texts, labels = make_texts(60, seed=5)
    multi = [f"{l},long" if len(t.split()) > 10 else l for t, l in zip(texts, labels)]
    path = tmp_path / "multi.csv"
    csv.write_csv(pa.table({"text": texts, "tags": multi}), path)
    manifest = fine_tune(path, tmp_path / "m", base_model=tiny_base, label_column="tags", multi_label=True,
                         epochs=2, lr=3e-3, quiet=True)
    assert manifest["labels"] == ["long", "neg", "pos"]
    assert manifest["problem_type"] == "multi_label_classification"
    assert "micro_f1" in manifest["train"]["test_metrics"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"


def test_multi_label_from_list_column(tmp_path, tiny_base):
    texts, labels = make_texts(40, seed=6)
    path = write_parquet(tmp_path / "lists.parquet", text=texts, labels=[[l] for l in labels])
    manifest = fine_tune(path, tmp_path / "m", base_model=tiny_base, label_column="labels", multi_label=True,
                         epochs=1, quiet=True)
    assert manifest["labels"] == ["neg", "pos"]


@pytest.mark.parametrize(
    "columns, kwargs, message",
    [
        ({"body": ["a"] * 10, "label": ["x", "y"] * 5}, {}, "Column 'text' not found"),
        ({"text": ["a"] * 10, "label": ["x"] * 10}, {}, "single class"),
        ({"text": ["a"] * 10, "label": ["x", None] * 5}, {}, "row 2"),
        ({"text": ["a"] * 10, "label": ["x", "y"] * 5}, {"labels": ("x", "z")}, "not in the fixed label set"),
        ({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}, {}, "no data rows"),
    ],
)
def test_bad_training_input_is_a_clear_error_and_writes_nothing(tmp_path, tiny_base, columns, kwargs, message):
    path = write_parquet(tmp_path / "bad.parquet", **columns)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message) as err:
        fine_tune(path, out, base_model=tiny_base, quiet=True, **kwargs)
    assert "bad.parquet" in str(err.value)
    assert not out.exists()


def test_existing_output_needs_overwrite(tmp_path, tiny_base, sentiment_csv):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="--overwrite"):
        fine_tune(sentiment_csv, out, base_model=tiny_base, quiet=True)
    assert (out / "keep.txt").read_text() == "x"


def test_pickle_base_model_is_refused(tmp_path, tiny_base, sentiment_csv):
    import shutil
    from bertbatch.errors import ModelError

    base = tmp_path / "pickled"
    shutil.copytree(tiny_base, base)
    (base / "model.safetensors").rename(base / "pytorch_model.bin")
    with pytest.raises(ModelError, match="--allow-pickle"):
        fine_tune(sentiment_csv, tmp_path / "out", base_model=str(base), quiet=True)


def test_train_console_is_one_table_row_per_epoch_and_q_silences_it(tmp_path, tiny_base, sentiment_csv):
    args = ["train", str(sentiment_csv), "--base-model", tiny_base, "--epochs", "2", "--lr", "3e-3",
            "--early-stopping-patience", "5"]
    shown = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a")])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["epoch", "train_loss", "val_loss"])
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["1", "2"]
    assert "{'loss'" not in shown.output and "it/s" not in shown.output and "{'eval_loss'" not in shown.output
    quiet = CliRunner().invoke(cli, ["-q", *args, "--epochs", "1", "-o", str(tmp_path / "b")])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output == ""
