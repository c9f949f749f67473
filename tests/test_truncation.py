"""Truncation strategies (issue 21): head+tail cuts exactly, train records the strategy, every engine reads it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from bertbatch import Scorer, fine_tune, score_file
from bertbatch.evaluate import evaluate
from helpers import FILLER, NEGATIVE, POSITIVE, write_parquet

MAX_LENGTH = 16  # 14 text tokens between [CLS] and [SEP]
HEAD = 5


def _long_texts(n: int, seed: int = 0) -> list[str]:
    """Texts of 1..60 words (some far past 14 tokens, some under), with words that split into several pieces."""
    rng = random.Random(seed)
    words = FILLER + POSITIVE + NEGATIVE + ["unbelievably", "tokenization", "naïve", "café", "x"]
    return [" ".join(rng.choices(words, k=rng.choice([1, 3, 10, 14, 30, 60]))) for _ in range(n)]


def _segments(encoded) -> list[list[int]]:
    tokens = encoded.tokens
    assert np.array_equal(tokens.owner, np.arange(encoded.n))  # one segment per row, in order
    return [tokens.ids[a:b].tolist() for a, b in zip(tokens.offsets[:-1], tokens.offsets[1:])]


def _expected_head_tail(tokenizer_file, texts: list[str], head: int) -> tuple[list[list[int]], list[bool]]:
    """From the tokenizers library's full encodings: [CLS] + first `head` + last (14 - head) text tokens + [SEP]."""
    full = Tokenizer.from_file(str(tokenizer_file))
    full.no_truncation()
    full.no_padding()
    cls, sep = full.token_to_id("[CLS]"), full.token_to_id("[SEP]")
    room = MAX_LENGTH - 2
    expected, cut = [], []
    for encoding in full.encode_batch(texts):
        assert encoding.ids[0] == cls and encoding.ids[-1] == sep
        text = encoding.ids[1:-1]
        cut.append(len(text) > room)
        expected.append([cls] + (text[:head] + text[len(text) - (room - head):] if len(text) > room else text) + [sep])
    return expected, cut


@pytest.mark.parametrize("backend, name", [("auto", "nanotoken"), ("tokenizers", "tokenizers")])
def test_head_tail_keeps_exactly_the_head_and_tail_tokens_in_both_backends_in_any_batching(tiny_model, backend, name):
    texts = _long_texts(60)
    expected, cut = _expected_head_tail(tiny_model / "tokenizer.json", texts, HEAD)
    assert any(cut) and not all(cut)
    scorer = Scorer(tiny_model, graph="torch", tokenizer_backend=backend, truncation="head+tail", head_tokens=HEAD,
                    max_length=MAX_LENGTH)
    assert scorer.tokenizer_backend == name
    together = scorer.encode(texts)
    assert _segments(together) == expected
    assert together.truncated.tolist() == cut
    assert all(len(s) == MAX_LENGTH for s, c in zip(expected, cut) if c)
    # batching: each text alone, and the texts reversed, give the same tokens
    assert [_segments(scorer.encode([t]))[0] for t in texts] == expected
    assert _segments(scorer.encode(texts[::-1]))[::-1] == expected


def test_tail_keeps_the_last_tokens_and_both_backends_agree(tiny_model):
    texts = _long_texts(40, seed=1)
    expected, _ = _expected_head_tail(tiny_model / "tokenizer.json", texts, 0)
    for backend in ("auto", "tokenizers"):
        scorer = Scorer(tiny_model, graph="torch", tokenizer_backend=backend, truncation="tail", max_length=MAX_LENGTH)
        assert _segments(scorer.encode(texts)) == expected


def test_pairs_refuse_a_strategy_other_than_head(tiny_model):
    from bertbatch.errors import InputError

    with pytest.raises(InputError, match="text pairs"):
        Scorer(tiny_model, graph="torch", truncation="head+tail", text_pair_column="b")


# ------------------------------------------------------------------------------------- recorded in the model
@pytest.fixture(scope="module")
def head_tail_model(tmp_path_factory, tiny_base, sentiment_csv):
    out = tmp_path_factory.mktemp("ht") / "model"
    fine_tune(sentiment_csv, out, base_model=tiny_base, epochs=1, lr=3e-3, batch_size=8, max_length=MAX_LENGTH,
              truncation="head+tail", head_tokens=4, quiet=True)
    return out


def test_train_records_the_strategy_and_score_and_eval_read_it_without_a_flag(head_tail_model, tiny_model, tmp_path):
    manifest = json.loads((head_tail_model / "bertbatch.json").read_text())
    assert manifest["truncation"] == {"strategy": "head+tail", "head_tokens": 4}
    texts = _long_texts(30, seed=2)
    default = Scorer(head_tail_model, graph="torch")
    explicit = Scorer(head_tail_model, graph="torch", truncation="head+tail", head_tokens=4)
    head = Scorer(head_tail_model, graph="torch", truncation="head")
    assert _segments(default.encode(texts)) == _segments(explicit.encode(texts)) != _segments(head.encode(texts))
    assert head.truncation_label == "head"  # the flag overrides the record
    # a model trained before strategies were recorded reads heads
    assert Scorer(tiny_model, graph="torch").truncation_label == "head"

    data = write_parquet(tmp_path / "in.parquet", text=texts, label=["pos"] * len(texts))
    summary = score_file(data, tmp_path / "out.parquet", head_tail_model, graph="torch", keep=("text",))
    assert summary["truncation"] == "head+tail:4"
    import pyarrow.parquet as pq

    scored = pq.read_table(tmp_path / "out.parquet")
    np.testing.assert_allclose(scored["score"].to_numpy(), [r["score"] for r in explicit.predict(texts)], rtol=1e-6)
    report = evaluate(head_tail_model, data, graphs=["torch"])
    assert report["graphs"]["torch"]["truncation"] == "head+tail:4"


def test_export_calibration_and_gates_read_the_recorded_strategy(head_tail_model):
    from bertbatch.export import _calibration_feeds, _truncation_read
    from bertbatch.modeldir import ModelDir

    texts = _long_texts(20, seed=3)
    feeds = _calibration_feeds(head_tail_model, texts)
    expected = _segments(Scorer(head_tail_model, graph="torch", truncation="head+tail", head_tokens=4).encode(texts))
    assert [f["input_ids"][0].tolist() for f in feeds] == expected
    # the gates score through Scorer (no flag), and the export section records what they read
    assert _truncation_read(ModelDir.open(head_tail_model)) == "head+tail:4"


# ------------------------------------------------------------------------------------- the decisive text at the end
def _end_labelled(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Documents of 30 filler words whose only sentiment words are their last two: past a head-only cut at 16."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        ending = rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
        texts.append(" ".join(rng.choices(FILLER, k=30) + ending))
        labels.append(label)
    return texts, labels


def test_a_document_labelled_by_its_last_words_is_read_right_by_head_tail_not_by_head(tmp_path, tiny_base):
    texts, labels = _end_labelled(120, seed=0)
    data = write_parquet(tmp_path / "end.parquet", text=texts, label=labels)
    test_texts, test_labels = _end_labelled(60, seed=1)
    accuracy = {}
    for strategy in ("head", "head+tail"):
        out = tmp_path / strategy.replace("+", "_")
        fine_tune(data, out, base_model=tiny_base, epochs=6, lr=3e-3, batch_size=8, max_length=MAX_LENGTH,
                  truncation=strategy, early_stopping_patience=6, quiet=True)
        rows = Scorer(out, graph="torch").predict(test_texts)
        accuracy[strategy] = float(np.mean([r["label"] == l for r, l in zip(rows, test_labels)]))
        assert all(r["truncated"] for r in rows)
    assert accuracy["head+tail"] >= 0.9, accuracy
    assert accuracy["head"] <= 0.7, accuracy  # the head never sees a sentiment word: chance
