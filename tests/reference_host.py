"""The host path as it was before the bulk rewrite (commit 31183b7), kept as a test oracle.

Per-row Python throughout: easy to read, slow. The tests check that the array path gives exactly these
rows, values and order: same batches, same logits, same Arrow columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from bertbatch.batching import bucket_length
from bertbatch.errors import ModelError
from bertbatch.score import Result, Scorer, _sigmoid, _softmax


def plan_batches(lengths, max_tokens, max_rows, max_length, multiple=1, buckets=None):
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
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
        batches.append((order[start:end], padded))
        start = end
    return batches


def pad(sequences, length, pad_id=0):
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


@dataclass
class Encoded:
    n: int
    segments: list
    type_ids: list
    owner: np.ndarray
    truncated: np.ndarray
    errors: list
    plan: list = field(default_factory=list)


class ReferenceScorer(Scorer):
    """Scorer with the old per-row encode / run / result columns."""

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
        encoded = Encoded(n, segments, type_ids, np.asarray(owner, dtype=np.int64), truncated, errors)
        encoded.plan = plan_batches([len(s) for s in segments], self.max_tokens, self.max_batch_rows,
                                    self.max_length, buckets=self.buckets)
        return encoded

    def run(self, encoded):
        k = len(self.model.labels)
        seg_logits = np.empty((len(encoded.segments), k), dtype=np.float32)
        real = padded = 0
        for rows, length in encoded.plan:
            seqs = [encoded.segments[i] for i in rows]
            ids, mask = pad(seqs, length)
            types, _ = pad([encoded.type_ids[i] for i in rows], length)
            logits = self._run_halving(ids, mask, types)
            if logits.shape != (len(seqs), k):
                raise ModelError("bad shape")
            seg_logits[rows] = logits
            real += int(mask.sum())
            padded += mask.size
        # the recorded calibration, as Scorer applies it (not part of the host path this oracle checks)
        scaled = seg_logits if self.temperature is None else seg_logits / self.temperature
        seg_probs = _sigmoid(scaled) if self.model.multi_label else _softmax(scaled)
        probs = np.full((encoded.n, k), np.nan, dtype=np.float32)
        logits = np.full((encoded.n, k), np.nan, dtype=np.float32)
        windows = np.bincount(encoded.owner, minlength=encoded.n)
        if len(encoded.owner):
            if self.config.aggregate == "max":
                np.fmax.at(probs, encoded.owner, seg_probs)
                np.fmax.at(logits, encoded.owner, seg_logits)
            else:
                sums_p = np.zeros_like(probs)
                sums_l = np.zeros_like(logits)
                np.add.at(sums_p, encoded.owner, seg_probs)
                np.add.at(sums_l, encoded.owner, seg_logits)
                has = windows > 0
                probs[has] = sums_p[has] / windows[has, None]
                logits[has] = sums_l[has] / windows[has, None]
        return Result(probs, logits, encoded.truncated, encoded.errors, windows, real, padded)

    def encode_batch(self, batch):
        texts = batch.column(self.config.text_column).to_pylist()
        pair = self.config.text_pair_column
        return self.encode(texts, batch.column(pair).to_pylist() if pair else None)

    def assemble(self, batch, keep, result):
        columns = {name: batch.column(name) for name in keep}
        columns.update(result_columns(result, self.model.labels, self.model.multi_label, self.config))
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
        order = np.argsort(-np.nan_to_num(probs, nan=-1), axis=1)[:, :k]
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
