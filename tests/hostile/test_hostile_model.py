"""Hostile model directories: files that do not parse, types that are wrong, labels that contradict themselves.
The directory is validated as a whole when it is opened: exit 3 with one line naming the file (and the key),
never exit 70 and never a job that runs and writes contradictory columns."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from hostile_helpers import cli, texts_table


@pytest.fixture
def model(tmp_path, tiny_exported):
    """A private copy of the tiny exported model (tests/conftest.py), free to damage."""
    return shutil.copytree(tiny_exported, tmp_path / "m")


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(texts_table(20), path)
    return path


def _edit_json(path, **changes):
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _score(model, table, tmp_path, *extra):
    return cli("score", model, table, "-o", tmp_path / "out.parquet", "--silent", *extra)


def test_duplicate_label_names_in_id2label_are_refused(tmp_path, model, table):
    _edit_json(model / "config.json", id2label={"0": "ham", "1": "ham"}, label2id={"ham": 1})
    _score(model, table, tmp_path, "--probs").assert_error(3, "config.json", "id2label", "ham")
    assert not (tmp_path / "out.parquet").exists()


def test_non_integer_id2label_keys_are_refused(tmp_path, model, table):
    _edit_json(model / "config.json", id2label={"neg": "neg", "pos": "pos"})
    _score(model, table, tmp_path).assert_error(3, "config.json", "id2label keys")


def test_id2label_keys_with_a_gap_are_refused(tmp_path, model, table):
    _edit_json(model / "config.json", id2label={"0": "neg", "2": "pos"}, label2id={"neg": 0, "pos": 2})
    _score(model, table, tmp_path).assert_error(3, "config.json", "0..1")


def test_label2id_contradicting_id2label_is_refused(tmp_path, model, table):
    _edit_json(model / "config.json", label2id={"neg": 1, "pos": 0})
    _score(model, table, tmp_path).assert_error(3, "config.json", "label2id")


def test_truncated_config_json_is_a_model_error_naming_it(tmp_path, model, table):
    _truncate(model / "config.json")
    _score(model, table, tmp_path).assert_error(3, "config.json", "not valid JSON")


def test_truncated_tokenizer_json_is_a_model_error_naming_it(tmp_path, model, table):
    _truncate(model / "tokenizer.json")
    _score(model, table, tmp_path).assert_error(3, "tokenizer.json")


def test_truncated_bertbatch_json_is_a_model_error_naming_it(tmp_path, model, table):
    _truncate(model / "bertbatch.json")
    _score(model, table, tmp_path).assert_error(3, "bertbatch.json", "not valid JSON")


def test_max_length_as_a_string_in_bertbatch_json_is_refused(tmp_path, model, table):
    _edit_json(model / "bertbatch.json", max_length="128")
    _score(model, table, tmp_path).assert_error(3, "bertbatch.json", "max_length")


def test_max_position_embeddings_as_a_string_is_refused(tmp_path, model, table):
    _edit_json(model / "config.json", max_position_embeddings="512")
    _score(model, table, tmp_path).assert_error(3, "config.json", "max_position_embeddings")


def test_graph_path_that_is_a_directory_is_a_model_error(tmp_path, model, table):
    (model / "onnx" / "other.onnx").mkdir()
    _score(model, table, tmp_path, "--graph", "onnx/other.onnx").assert_error(3, "other.onnx", "not a file")


def test_default_graph_replaced_by_a_directory_is_a_model_error(tmp_path, model, table):
    (model / "onnx" / "model.onnx").unlink()
    (model / "onnx" / "model.onnx").mkdir()
    _score(model, table, tmp_path, "--graph", "fp32").assert_error(3, "model.onnx", "not a file")


def test_a_valid_copy_still_scores_every_row(tmp_path, model, table):
    _score(model, table, tmp_path).assert_ok()
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 20
