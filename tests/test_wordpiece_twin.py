"""nanotoken (flat arrays, tens of times faster) tokenizes single texts exactly as the tokenizers library does.

Each test runs `tokenize` both ways on the same texts: with the WordPiece twin and with the tokenizers library
alone (the path every text took before), and compares ids, segment offsets, owners and truncation flags.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertbatch import Scorer
from bertbatch.modeldir import ModelDir
from bertbatch.tokenize import AWKWARD_TEXTS, tokenize, wordpiece_twin

WORDS = ["the", "food", "was", "un", "##believable", "naïve", "Café", "表", "👍", "[SEP]", "[CLS]", "x" * 120,
         "don't", "U.S.A.", "\u0301", "\u200b", "\t", "\n", "\x00", "İ", "ß", "-", "..."]
texts_strategy = st.lists(
    st.one_of(
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=60).map(" ".join),
        st.text(min_size=1, max_size=300),
    ),
    min_size=1, max_size=40,
)


def _tokenizer(model_dir, max_length: int, stride: int, normalizer: dict | None = None):
    """The model's tokenizer, or the same with another BertNormalizer (cased, accents kept, no CJK spacing)."""
    tokenizer = ModelDir.open(model_dir).tokenizer(max_length, stride=stride)
    if normalizer:
        from tokenizers import normalizers

        tokenizer.normalizer = normalizers.BertNormalizer(**normalizer)
    return tokenizer


NORMALIZERS = [
    None,
    {"lowercase": False, "strip_accents": False},
    {"lowercase": False, "strip_accents": True},
    {"lowercase": True, "strip_accents": False, "handle_chinese_chars": False},
    {"clean_text": False, "lowercase": True},
]


def _same(a, b) -> None:
    assert np.array_equal(a.ids, b.ids)
    assert np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(a.owner, b.owner)
    assert np.array_equal(a.truncated, b.truncated)


def test_the_minilm_tokenizer_gets_a_twin(tiny_model):
    assert wordpiece_twin(_tokenizer(tiny_model, 128, 0)) is not None


def test_the_twin_probe_leaves_the_tokenizer_truncating_as_before(tiny_model):
    # the probe encodes untruncated on the caller's tokenizer itself (no copy): truncation must come back
    tokenizer = _tokenizer(tiny_model, 16, 4)
    before = tokenizer.truncation
    assert wordpiece_twin(tokenizer) is not None
    assert tokenizer.truncation == before
    assert len(tokenizer.encode("word " * 100).ids) == 16


@settings(max_examples=100, deadline=None)
@given(texts=texts_strategy, max_length=st.integers(3, 40), window=st.booleans(), stride_share=st.floats(0, 0.99),
       normalizer=st.sampled_from(NORMALIZERS))
def test_twin_truncates_and_windows_like_the_tokenizers_library(tiny_model, texts, max_length, window, stride_share,
                                                                normalizer):
    stride = int(stride_share * (max_length - 2)) if window else 0
    if window and stride >= max_length - 2:
        stride = max_length - 3
    tokenizer = _tokenizer(tiny_model, max_length, stride, normalizer)
    twin = wordpiece_twin(tokenizer)
    assert twin is not None
    fast = tokenize(tokenizer, texts, max_length, window, types=False, wordpiece=twin)
    slow = tokenize(tokenizer, texts, max_length, window, types=False)
    _same(fast, slow)


def test_twin_on_threads_keeps_order_and_ids(tiny_model):
    tokenizer = _tokenizer(tiny_model, 24, 5)
    texts = [f"{i} " + AWKWARD_TEXTS[i % len(AWKWARD_TEXTS)] * (1 + i % 3) for i in range(2000)]
    with ThreadPoolExecutor(3) as pool:
        fast = tokenize(tokenizer, texts, 24, True, types=False, pool=pool, chunk_rows=37,
                        wordpiece=wordpiece_twin(tokenizer))
    _same(fast, tokenize(tokenizer, texts, 24, True, types=False))


def test_a_tokenizer_nanotoken_cannot_run_falls_back_to_the_tokenizers_library(tmp_path, tiny_exported):
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = ModelDir.open(tiny_exported).tokenizer(16).get_vocab()
    bpe = Tokenizer(models.BPE(vocab={k: v for k, v in vocab.items() if "#" not in k}, merges=[], unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    assert wordpiece_twin(bpe) is None
    model = tmp_path / "bpe-model"  # the exported model with that tokenizer: a Scorer nanotoken cannot serve
    shutil.copytree(tiny_exported, model)
    bpe.save(str(model / "tokenizer.json"))
    scorer = Scorer(model, graph="fp32", provider="cpu", max_length=16)
    assert scorer.tokenizer_backend == "tokenizers"
    texts = ["a good day", "the movie was awful and boring", "what a wonderful superb day " * 10]
    encoded = scorer.encode(texts)
    bpe.enable_truncation(16)
    expected = [e.ids for e in bpe.encode_batch(texts)]
    tokens = encoded.tokens
    assert [tokens.ids[a:b].tolist() for a, b in zip(tokens.offsets, tokens.offsets[1:])] == expected
    assert expected[0][0] == vocab["[CLS]"] and len(expected[2]) == 16
    result = scorer.logits(texts)
    assert result.errors == [None] * 3 and not np.isnan(result.probs).any()


def test_scorer_labels_the_same_with_either_backend(tiny_exported):
    texts = list(AWKWARD_TEXTS) * 3 + ["a good day", "what a wonderful superb day " * 30]
    fast = Scorer(tiny_exported, graph="fp32", provider="cpu", max_length=16, long_text="window", stride=4)
    slow = Scorer(tiny_exported, graph="fp32", provider="cpu", max_length=16, long_text="window", stride=4,
                  tokenizer_backend="tokenizers")
    assert (fast.tokenizer_backend, slow.tokenizer_backend) == ("nanotoken", "tokenizers")
    a, b = fast.logits(texts), slow.logits(texts)
    assert np.array_equal(a.logits, b.logits)
    assert np.array_equal(a.truncated, b.truncated)


@pytest.mark.parametrize("max_length", [3, 4])
def test_the_shortest_segments_are_cut_like_the_tokenizers_library(tiny_model, max_length):
    tokenizer = _tokenizer(tiny_model, max_length, 0)
    texts = ["hello world again", "a"]
    _same(tokenize(tokenizer, texts, max_length, False, False, wordpiece=wordpiece_twin(tokenizer)),
          tokenize(tokenizer, texts, max_length, False, False))


@pytest.mark.parametrize("backend", ["auto", "tokenizers"])
def test_a_lone_surrogate_is_that_row_s_error_not_the_batch_s(tiny_exported, backend):
    scorer = Scorer(tiny_exported, graph="fp32", provider="cpu", tokenizer_backend=backend)
    result = scorer.logits(["a good day", "bad \ud800 text", "an awful trip"])
    assert result.errors[0] is None and result.errors[2] is None
    assert "lone surrogate" in result.errors[1]
    assert np.isnan(result.logits[1]).all() and not np.isnan(result.logits[[0, 2]]).any()
