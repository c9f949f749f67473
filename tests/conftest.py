"""Fixtures and hooks only (shared helpers live in tests/helpers.py): a tiny seeded BERT built locally (real
MiniLM tokenizer), a small labeled table, and the `gpu` marker's skip."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

from helpers import make_texts  # noqa: E402
from s3server import s3, s3_server  # noqa: E402,F401 - the S3-protocol server fixtures (test_store.py)


def pytest_collection_modifyitems(config, items):
    """Skip `@pytest.mark.gpu` tests unless onnxruntime offers CUDAExecutionProvider on this machine."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return
    skip = pytest.mark.skip(reason=f"needs CUDAExecutionProvider; onnxruntime offers {available}")
    for item in gpu_tests:
        item.add_marker(skip)


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


@pytest.fixture(scope="session")
def tiny_exported(tmp_path_factory, tiny_model):
    """A copy of the tiny checkpoint with every ONNX graph `export_onnx` writes (dynamic int8 included)."""
    import shutil

    from bertbatch import export_onnx

    path = tmp_path_factory.mktemp("exported") / "tiny"
    shutil.copytree(tiny_model, path)
    export_onnx(path, fp16=True, int8_dynamic=True)
    return path
