"""An independent oracle for the host path: per-row Python over the tokenizers library, onnxruntime and numpy
directly, written from the documented behaviour (README: batching, output columns). It imports nothing from
bertbatch, so a regression in bertbatch's bucketing, batching, softmax or aggregation shows as a difference.

Slow and easy to read. The tests check that `Scorer` gives exactly these rows, values and order: same batches,
same logits, same Arrow columns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

# README, "Batching": 1024 padded tokens / 32 rows a batch on CPU unless --max-tokens/--max-batch-rows say otherwise
CPU_MAX_TOKENS, CPU_MAX_ROWS = 1024, 32
GRAPHS = {"fp32": "onnx/model.onnx", "int8": "onnx/model_int8.onnx", "fp16": "onnx/model_fp16.onnx",
          "int8-dynamic": "onnx/model_int8_dynamic.onnx"}


def bucket_length(length, max_length, multiple=1, buckets=None):
    """Padded length of a batch whose longest row has `length` tokens: the first bucket that holds it (the row's
    own length past the last), else `length` rounded up to `multiple`; capped at max_length, never below length."""
    if buckets:
        padded = next((b for b in buckets if b >= length), length)
    else:
        padded = -(-length // multiple) * multiple
    return max(length, min(padded, max_length))


def plan_batches(lengths, max_tokens, max_rows, max_length, multiple=1, buckets=None):
    """Rows sorted by length (stable), cut greedily: a batch takes the next row while rows x padded length of
    the longest stays within max_tokens and it has fewer than max_rows; a row alone may exceed the budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = []
    start = 0
    while start < len(order):
        end = start + 1
        padded = bucket_length(int(lengths[order[start]]), max_length, multiple, buckets)
        while end < len(order) and end - start < max_rows:
            candidate = bucket_length(int(lengths[order[end]]), max_length, multiple, buckets)
            if (end - start + 1) * candidate > max_tokens:
                break
            padded = candidate
            end += 1
        batches.append((np.array(order[start:end], dtype=np.int64), padded))
        start = end
    return batches


def pad(sequences, length, pad_id=0):
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


def softmax(row):
    """One row of float32 logits to probabilities, in float32 (shifted by the row's max for range)."""
    e = np.exp(row - row.max())
    return (e / e.sum()).astype(np.float32)


def sigmoid(row):
    return (1 / (1 + np.exp(-row))).astype(np.float32)


@dataclass
class Options:
    """The options the oracle honours, with the library's documented defaults."""

    graph: str = "fp32"
    provider: str = "cpu"
    max_length: int | None = None
    long_text: str = "truncate"
    stride: int = 0
    aggregate: str = "mean"
    text_column: str = "text"
    text_pair_column: str | None = None
    max_tokens: int | None = None
    max_batch_rows: int | None = None
    probs: bool = False
    top_k: int | None = None
    logits: bool = False
    threshold: float = 0.5
    calibration: str = "auto"  # auto: the temperature bertbatch.json records divides the logits; none: raw


@dataclass
class Encoded:
    n: int
    segments: list
    type_ids: list
    owner: list
    truncated: np.ndarray
    errors: list
    plan: list = field(default_factory=list)


@dataclass
class Result:
    probs: np.ndarray
    logits: np.ndarray
    truncated: np.ndarray
    errors: list
    windows: np.ndarray
    real_tokens: int
    padded_tokens: int


class OnnxSession:
    """onnxruntime on CPU as bertbatch documents it: all graph optimizations but SkipLayerNormalization's fusion
    (README: its CPU kernel is slower than the ops it fuses), intra-op threads = the CPUs this process may use."""

    def __init__(self, graph: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["SkipLayerNormFusion"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, input_ids, attention_mask, token_type_ids):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)


class ReferenceScorer:
    """Per-row encode / run / result columns, from the model directory's files."""

    def __init__(self, model_dir, runner=None, **options):
        from tokenizers import Tokenizer

        self.path = Path(model_dir)
        self.config = Options(**options)
        model_config = json.loads((self.path / "config.json").read_text())
        id2label = model_config["id2label"]
        self.labels = [id2label[k] for k in sorted(id2label, key=int)]
        self.multi_label = model_config.get("problem_type") == "multi_label_classification"
        model_max = self._model_max_length(model_config)
        self.max_length = min(self.config.max_length or model_max, model_max)
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        window = self.config.long_text == "window"
        self.tokenizer.enable_truncation(self.max_length, stride=self.config.stride if window else 0)
        self.runner = runner or OnnxSession(self.path / GRAPHS[self.config.graph])
        self.temperature = self._temperature() if self.config.calibration == "auto" else None
        self.max_tokens = self.config.max_tokens or CPU_MAX_TOKENS
        self.max_batch_rows = self.config.max_batch_rows or CPU_MAX_ROWS

    def _temperature(self):
        """The documented calibration record of bertbatch.json: softmax(logits / T); per label for multi-label."""
        manifest = self.path / "bertbatch.json"
        record = json.loads(manifest.read_text()).get("calibration") if manifest.exists() else None
        if not record or record.get("method") != "temperature":
            return None
        if self.multi_label:
            return np.array([record["temperatures"][name] for name in self.labels], dtype=np.float32)
        return np.float32(record["temperature"])

    def _model_max_length(self, model_config: dict) -> int:
        """bertbatch.json's max_length, else tokenizer_config.json's model_max_length when sane, else the position
        embeddings; never more than the position embeddings."""
        positions = model_config.get("max_position_embeddings", 512)
        manifest = self.path / "bertbatch.json"
        length = json.loads(manifest.read_text()).get("max_length") if manifest.exists() else None
        tokenizer_config = self.path / "tokenizer_config.json"
        if not length and tokenizer_config.exists():
            value = json.loads(tokenizer_config.read_text()).get("model_max_length")
            length = value if isinstance(value, int) and 0 < value < 100_000 else None
        return int(min(length or positions, positions))

    def encode(self, texts, pairs=None):
        n = len(texts)
        errors = [None] * n
        valid = []
        for i, text in enumerate(texts):
            if text is None:
                errors[i] = "null text"
            elif not isinstance(text, str):
                errors[i] = f"text is {type(text).__name__}, not a string"
            elif not text.strip():
                errors[i] = "empty text"
            elif any(0xD800 <= ord(c) <= 0xDFFF for c in text):
                errors[i] = "text has a lone surrogate (not valid Unicode); decode it with errors='replace'"
            else:
                valid.append(i)
        inputs = [texts[i] for i in valid] if pairs is None else [(texts[i], pairs[i] or "") for i in valid]
        encodings = self.tokenizer.encode_batch(inputs, add_special_tokens=True) if inputs else []
        truncated = np.zeros(n, dtype=bool)
        segments, type_ids, owner = [], [], []
        window = self.config.long_text == "window"
        for row, enc in zip(valid, encodings):
            truncated[row] = bool(enc.overflowing)
            for piece in [enc, *enc.overflowing] if window else [enc]:
                segments.append(piece.ids)
                type_ids.append(piece.type_ids)
                owner.append(row)
        encoded = Encoded(n, segments, type_ids, owner, truncated, errors)
        encoded.plan = plan_batches([len(s) for s in segments], self.max_tokens, self.max_batch_rows, self.max_length)
        return encoded

    def run(self, encoded):
        k = len(self.labels)
        seg_logits = [None] * len(encoded.segments)
        real = padded = 0
        for rows, length in encoded.plan:
            ids, mask = pad([encoded.segments[i] for i in rows], length)
            types, _ = pad([encoded.type_ids[i] for i in rows], length)
            logits = self.runner.run(ids, mask, types)
            assert logits.shape == (len(rows), k), logits.shape
            for i, row_logits in zip(rows, logits):
                seg_logits[i] = row_logits
            real += int(mask.sum())
            padded += mask.size
        to_probs = sigmoid if self.multi_label else softmax
        by_row = {}  # row -> its segments' (probs, logits), in segment order
        for row, row_logits in zip(encoded.owner, seg_logits):
            scaled = row_logits if self.temperature is None else (row_logits / self.temperature).astype(np.float32)
            by_row.setdefault(row, []).append((to_probs(scaled), row_logits))
        probs = np.full((encoded.n, k), np.nan, dtype=np.float32)
        logits = np.full((encoded.n, k), np.nan, dtype=np.float32)
        windows = np.zeros(encoded.n, dtype=np.int64)
        for row, pieces in by_row.items():
            windows[row] = len(pieces)
            probs[row] = self._aggregate([p for p, _ in pieces])
            logits[row] = self._aggregate([z for _, z in pieces])
        return Result(probs, logits, encoded.truncated, encoded.errors, windows, real, padded)

    def _aggregate(self, values):
        """A row's value over its windows: the one window's, else the max, or the mean (a float32 running sum
        divided by the count)."""
        if len(values) == 1:
            return values[0]
        if self.config.aggregate == "max":
            return np.max(values, axis=0)
        total = np.zeros_like(values[0])
        for value in values:
            total = (total + value).astype(np.float32)
        return (total / len(values)).astype(np.float32)

    def logits(self, texts, pairs=None):
        return self.run(self.encode(list(texts), pairs))

    def encode_batch(self, batch):
        texts = batch.column(self.config.text_column).to_pylist()
        pair = self.config.text_pair_column
        return self.encode(texts, batch.column(pair).to_pylist() if pair else None)

    def label_batch(self, batch, keep):
        return self.assemble(batch, keep, self.run(self.encode_batch(batch)))

    def assemble(self, batch, keep, result):
        columns = {name: batch.column(name) for name in keep}
        columns.update(result_columns(result, self.labels, self.multi_label, self.config))
        return pa.RecordBatch.from_pydict(columns)


def result_columns(result, labels, multi_label, config):
    ok = np.array([e is None for e in result.errors], dtype=bool)
    probs = result.probs
    columns = {}
    names = np.array(labels, dtype=object)
    if multi_label:
        chosen = [list(names[p >= config.threshold]) if good else None for p, good in zip(probs, ok)]
        columns["labels"] = pa.array(chosen, pa.list_(pa.string()))
    else:
        best = np.where(ok, np.nan_to_num(probs, nan=-1).argmax(axis=1), 0)
        columns["label"] = pa.array(np.where(ok, names[best], None), pa.string())
        columns["score"] = pa.array(probs[np.arange(len(best)), best], pa.float32(), mask=~ok)
    if config.probs:
        for j, name in enumerate(labels):
            columns[f"prob_{name}"] = pa.array(probs[:, j], pa.float32(), mask=~ok)
    if config.top_k:
        k = min(config.top_k, len(labels))
        order = np.argsort(-np.nan_to_num(probs, nan=-1), axis=1, kind="stable")[:, :k]
        top = [
            [{"label": labels[j], "score": float(p[j])} for j in o] if good else None
            for o, p, good in zip(order, probs, ok)
        ]
        columns["top_k"] = pa.array(top, pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())])))
    if config.logits:
        columns["logits"] = pa.array([list(r) if good else None for r, good in zip(result.logits, ok)],
                                     pa.list_(pa.float32()))
    columns["truncated"] = pa.array(result.truncated)
    if config.long_text == "window":
        columns["windows"] = pa.array(result.windows.astype(np.int32))
    columns["error"] = pa.array(result.errors, pa.string())
    return columns
