"""The array host path gives exactly the rows, values and order of a per-row path.

The oracle is tests/reference_host.py: per-row Python over the tokenizers library, onnxruntime and numpy, with
nothing imported from bertbatch; each test runs both on the same inputs.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
from helpers import make_texts
from reference_host import ReferenceScorer
from reference_host import result_columns as reference_columns

from bertbatch import Scorer
from bertbatch.config import ScoreConfig
from bertbatch.score import Result, blank_pattern, result_columns
from bertbatch.tokenize import tokenize

ODD = [None, "", "   ", "\u3000\t", "\x1c\x1d", "\x85", "a", "NA", "ünïcödé ✓ 表", "\u200b", " x ", "\x00"]


def _table(n: int, seed: int = 0) -> pa.RecordBatch:
    rng = random.Random(seed)
    texts, _ = make_texts(n, seed)
    texts = [rng.choice(ODD) if i % 7 == 3 else t for i, t in enumerate(texts)]
    pairs = [rng.choice([None, "", "the food", "an awful terrible boring trip " * 10]) for _ in texts]
    return pa.RecordBatch.from_pydict({"id": list(range(n)), "text": texts, "pair": pairs})


CONFIGS = {
    "truncate": {},
    "truncate-short-probs-topk-logits": {"max_length": 16, "probs": True, "top_k": 2, "logits": True},
    "window-mean": {"long_text": "window", "max_length": 16, "stride": 4, "logits": True},
    "window-max": {"long_text": "window", "max_length": 16, "stride": 4, "aggregate": "max", "probs": True},
    "pairs": {"text_pair_column": "pair", "max_length": 24, "logits": True},
    "pairs-window": {"text_pair_column": "pair", "max_length": 24, "long_text": "window", "stride": 4},
    "small-batches": {"max_tokens": 64, "max_batch_rows": 3, "top_k": 5},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_arrow_batches_score_exactly_as_before(tiny_exported, name):
    batch = _table(300)
    options = {"graph": "fp32", "provider": "cpu", **CONFIGS[name]}
    new = Scorer(tiny_exported, **options).label_batch(batch, ["id", "text"])
    old = ReferenceScorer(tiny_exported, **options).label_batch(batch, ["id", "text"])
    assert new.schema == old.schema
    assert new.equals(old), name


def test_in_memory_texts_of_any_type_score_exactly_as_before(tiny_exported):
    texts = [3, None, "", b"bytes", 1.5, "a good day", "  ", "what a wonderful superb day " * 20] * 5
    new = Scorer(tiny_exported, graph="fp32", provider="cpu", max_length=16, long_text="window", stride=4)
    old = ReferenceScorer(tiny_exported, graph="fp32", provider="cpu", max_length=16, long_text="window", stride=4)
    a, b = new.logits(texts), old.logits(texts)
    assert a.errors == b.errors
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.windows, b.windows)
    np.testing.assert_array_equal(a.truncated, b.truncated)
    assert (a.real_tokens, a.padded_tokens) == (b.real_tokens, b.padded_tokens)


def test_row_index_fake_sees_the_same_batches_as_before(tiny_model):
    from fakes import RowIndexRunner, row_text

    texts = [row_text(i, [0, 3, 40][i % 3]) for i in range(200)]
    batch = pa.RecordBatch.from_pydict({"text": texts})
    runs = []
    for cls in (Scorer, ReferenceScorer):
        fake = RowIndexRunner(str(tiny_model / "tokenizer.json"))
        out = cls(tiny_model, runner=fake, long_text="window", max_length=16, stride=4, max_tokens=96,
                  logits=True).label_batch(batch, ["text"])
        runs.append((out, fake.calls))
    assert runs[0][0].equals(runs[1][0])
    assert runs[0][1] == runs[1][1]  # same batch shapes, same order


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("top_k, probs, logits", [(None, False, False), (1, True, True), (9, False, True)])
def test_result_columns_are_the_old_columns(multi_label, top_k, probs, logits):
    rng = np.random.default_rng(0)
    n, labels = 500, ["a", "b", "c", "d"]
    raw = rng.normal(size=(n, len(labels))).astype(np.float32)
    p = (1 / (1 + np.exp(-raw)) if multi_label else np.exp(raw) / np.exp(raw).sum(1, keepdims=True)).astype(np.float32)
    errors = [rng.choice([None, None, None, "empty text", "null text"]) for _ in range(n)]
    bad = np.array([e is not None for e in errors])
    p[bad], raw[bad] = np.nan, np.nan
    p[5] = p[6] = 0.5  # ties keep the first label, as argmax/argsort did
    result = Result(p, raw, rng.random(n) < 0.1, errors, np.ones(n, dtype=np.int64), 0, 0)
    config = ScoreConfig(top_k=top_k, probs=probs, logits=logits, threshold=0.5)
    new = pa.table(result_columns(result, labels, multi_label, config))
    old = pa.table(reference_columns(result, labels, multi_label, config))
    assert new.schema == old.schema
    assert new.equals(old)


def test_empty_result_columns_keep_their_types():
    empty = Result(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, bool), [],
                   np.zeros(0, np.int64), 0, 0)
    config = ScoreConfig(top_k=2, probs=True, logits=True)
    for multi in (False, True):
        new = pa.table(result_columns(empty, ["x", "y"], multi, config))
        assert new.schema == pa.table(reference_columns(empty, ["x", "y"], multi, config)).schema


def test_blank_pattern_is_exactly_what_str_strip_empties():
    import pyarrow.compute as pc

    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert max(map(ord, spaces)) < 0x3001  # the pattern's scan covers every space Python knows
    texts = spaces + ["".join(spaces), "a", " a ", "\u200b", "\x00", "", "\x1c \u3000", "x" + spaces[0]]
    found = pc.match_substring_regex(pa.array(texts), blank_pattern()).to_pylist()
    assert found == [not t.strip() for t in texts]


def test_tokenizing_on_threads_in_small_chunks_keeps_order(tiny_model):
    from bertbatch.modeldir import ModelDir

    tok = ModelDir.open(tiny_model).tokenizer(16, stride=4)
    texts, _ = make_texts(300, seed=5)
    with ThreadPoolExecutor(3) as pool:
        threaded = tokenize(tok, texts, 16, window=True, types=True, pool=pool, chunk_rows=7)
    serial = tokenize(tok, texts, 16, window=True, types=True)
    expected = [(row, piece.ids) for row, e in enumerate(tok.encode_batch(texts)) for piece in [e, *e.overflowing]]
    for tokens in (threaded, serial):
        got = [(int(o), tokens.ids[a:b].tolist()) for o, a, b in zip(tokens.owner, tokens.offsets, tokens.offsets[1:])]
        assert got == expected


def test_pair_windows_keep_the_token_types_of_the_full_encoder(tiny_model):
    from bertbatch.modeldir import ModelDir

    tok = ModelDir.open(tiny_model).tokenizer(16, stride=4)
    pairs = [("a good day", "an awful terrible boring trip " * 6)]
    tokens = tokenize(tok, pairs, 16, window=True, types=True)
    full = tok.encode_batch(pairs)[0]
    expected = [t for piece in [full, *full.overflowing] for t in piece.type_ids]
    assert tokens.types.tolist() == expected and len(tokens.owner) > 1


def test_ascii_twin_encodes_every_ascii_text_like_the_full_tokenizer(tiny_model):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from bertbatch.modeldir import ModelDir
    from bertbatch.tokenize import ascii_twin

    tok = ModelDir.open(tiny_model).tokenizer(16, stride=4)
    twin = ascii_twin(tok)
    assert twin is not None and twin.truncation == tok.truncation

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(st.characters(max_codepoint=127), max_size=80), min_size=1, max_size=20))
    def same(texts):
        for a, b in zip(tok.encode_batch(texts), twin.encode_batch_fast(texts)):
            assert [p.ids for p in [a, *a.overflowing]] == [p.ids for p in [b, *b.overflowing]]
            assert [p.type_ids for p in [a, *a.overflowing]] == [p.type_ids for p in [b, *b.overflowing]]

    same()
    mixed = ["plain text", "ünïcödé ✓ 表", "Café", "ASCII again", "中文"] * 40
    tokens = tokenize(tok, mixed, 16, window=True, types=False, ascii_tokenizer=twin, chunk_rows=33)
    expected = [p.ids for e in tok.encode_batch(mixed) for p in [e, *e.overflowing]]
    assert [tokens.ids[a:b].tolist() for a, b in zip(tokens.offsets, tokens.offsets[1:])] == expected
