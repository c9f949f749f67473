"""Shared fixtures: a tiny seeded BERT built locally (real MiniLM tokenizer), small labeled tables."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

from s3server import s3, s3_server  # noqa: E402,F401 - the S3-protocol server fixtures (test_store.py)

POSITIVE = ["great", "excellent", "wonderful", "love", "superb", "happy", "fantastic", "brilliant"]
NEGATIVE = ["awful", "terrible", "horrible", "hate", "dreadful", "sad", "boring", "broken"]
FILLER = ["the", "movie", "food", "service", "was", "really", "quite", "and", "a", "day", "it", "our", "trip"]


def make_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sentences whose label is carried by sentiment words, with varied lengths (3..60 words)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILLER, k=rng.choice([2, 4, 8, 20, 50]))
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="session")
def minilm_path():
    from bertbatch.assets import resolve_model

    return resolve_model("minilm-l6")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, minilm_path):
    """A randomly initialised 2-layer BERT (hidden 32) with the real MiniLM tokenizer, saved as a base model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-base")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory):
    texts, labels = make_texts(80)
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    pa_table = pa.table({"id": [f"{i:05d}" for i in range(len(texts))], "text": texts, "label": labels})
    from pyarrow import csv

    csv.write_csv(pa_table, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_base, sentiment_csv):
    """The tiny base fine-tuned on the sentiment table: a real checkpoint written by `fine_tune`."""
    from bertbatch import fine_tune

    out = tmp_path_factory.mktemp("models") / "tiny"
    fine_tune(sentiment_csv, out, base_model=tiny_base, epochs=8, lr=3e-3, batch_size=8, max_length=128,
              early_stopping_patience=8, quiet=True)
    return out


def write_parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture(scope="session")
def tiny_exported(tmp_path_factory, tiny_model):
    """A copy of the tiny checkpoint with every ONNX graph `export_onnx` writes (dynamic int8 included)."""
    import shutil

    from bertbatch import export_onnx

    path = tmp_path_factory.mktemp("exported") / "tiny"
    shutil.copytree(tiny_model, path)
    export_onnx(path, fp16=True, int8_dynamic=True)
    return path
