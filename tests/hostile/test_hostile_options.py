"""Hostile option values: each impossible value is refused where it is defined (config.py, or against the model
when it opens) with exit 1 and one line that says the allowed range; none reaches the tokenizer or a kernel."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from hostile_helpers import cli, texts_table


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(texts_table(20), path)
    return path


def _score(model, table, tmp_path, *extra):
    out = tmp_path / "out.parquet"
    result = cli("score", model, table, "-o", out, "--silent", *extra)
    result.written = out.exists()
    return result


@pytest.mark.parametrize("value", ["1", "2"])
def test_max_length_without_room_for_text_is_refused_naming_the_minimum(tmp_path, model, table, value):
    result = _score(model, table, tmp_path, "--max-length", value)
    result.assert_error(1, f"--max-length {value}", "minimum is 3")
    assert not result.written


def test_max_length_zero_is_refused_not_taken_as_the_models_maximum(tmp_path, model, table):
    result = _score(model, table, tmp_path, "--max-length", "0")
    result.assert_error(1, "--max-length", "got 0")
    assert not result.written


def test_negative_max_length_is_refused(tmp_path, model, table):
    _score(model, table, tmp_path, "--max-length", "-5").assert_error(1, "--max-length", "got -5")


def test_max_length_above_the_position_limit_is_refused(tmp_path, model, table):
    _score(model, table, tmp_path, "--max-length", "600").assert_error(1, "--max-length 600", "position limit", "512")


def test_pair_max_length_without_room_for_both_texts_is_refused(tmp_path, model):
    path = tmp_path / "pairs.parquet"
    pq.write_table(texts_table(5).append_column("pair", texts_table(5)["text"]), path)
    _score(model, path, tmp_path, "--text-pair-column", "pair", "--max-length", "4").assert_error(
        1, "--max-length 4", "minimum is 5")


def test_negative_stride_is_refused(tmp_path, model, table):
    _score(model, table, tmp_path, "--long-text", "window", "--stride", "-1").assert_error(1, "--stride", "got -1")


def test_stride_as_large_as_the_window_room_is_refused(tmp_path, model, table):
    # 16 tokens minus [CLS] and [SEP] leave 14 text tokens: a stride of 14 would never advance
    _score(model, table, tmp_path, "--long-text", "window", "--max-length", "16", "--stride", "14").assert_error(
        1, "--stride 14", "14 text tokens")


def test_largest_stride_that_advances_is_accepted(tmp_path, model, table):
    _score(model, table, tmp_path, "--long-text", "window", "--max-length", "16", "--stride", "13").assert_ok()
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 20


def test_threshold_on_a_single_label_model_is_refused(tmp_path, model, table):
    _score(model, table, tmp_path, "--threshold", "0.3").assert_error(1, "--threshold", "single-label")


@pytest.mark.parametrize("value", ["nan", "-1", "2", "0", "1", "inf"])
def test_threshold_outside_zero_one_is_refused(tmp_path, model, table, value):
    _score(model, table, tmp_path, "--threshold", value).assert_error(1, "--threshold", "between 0 and 1")


def test_duplicate_keep_column_is_refused(tmp_path, model, table):
    _score(model, table, tmp_path, "--keep", "id,id").assert_error(1, "--keep", "'id'", "once")


def test_tokenizer_backend_is_validated_in_the_library(tmp_path, model, table):
    from bertbatch.config import ScoreConfig
    from bertbatch.errors import InputError

    with pytest.raises(InputError, match="--tokenizer-backend must be auto or tokenizers; got 'tokenisers'"):
        ScoreConfig(tokenizer_backend="tokenisers")
