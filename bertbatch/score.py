"""Scoring: texts -> tokens -> length-sorted token-budget batches -> runner -> labels, in input order.

`Scorer` scores in-memory texts. `score_file` streams tables through it with three overlapped stages
(read+tokenize | run | write) joined by bounded queues, so the runtime rarely waits on I/O.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from .batching import GPU_BUCKETS, pad, plan_batches
from .config import ScoreConfig
from .errors import InputError
from .io import Rejects, expand_inputs, input_schema, output_format, read_batches
from .modeldir import ModelDir
from .output import OutputLayout
from .runtime import CUDA, OrtRunner, TorchRunner, resolve_provider

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """A window of rows, tokenized and planned; rows without usable text are set aside with a reason."""

    n: int
    segments: list  # token id lists, one per model input (several per row in window mode)
    type_ids: list
    owner: np.ndarray  # row index of each segment
    truncated: np.ndarray  # (n,) bool
    errors: list  # (n,) None or reason
    plan: list = field(default_factory=list)


@dataclass
class Result:
    probs: np.ndarray  # (n, k) float32, NaN for rows with an error
    logits: np.ndarray  # (n, k) float32
    truncated: np.ndarray
    errors: list
    windows: np.ndarray  # (n,) segments per row
    real_tokens: int
    padded_tokens: int


class Scorer:
    """Score texts with a model directory's ONNX graph (or its PyTorch weights when no graph exists)."""

    def __init__(self, model_dir: str | Path, config: ScoreConfig | None = None, runner=None, **overrides):
        from dataclasses import replace

        self.config = config = replace(config or ScoreConfig(), **overrides)
        self.model = ModelDir.open(model_dir)
        if runner is None:
            provider = resolve_provider(config.provider)
            graph = self.model.graph_path(config.graph, provider)
            if graph is None:
                log.warning("%s has no ONNX graph: scoring with PyTorch (slow). Run `bertbatch export` first.", model_dir)
                runner = TorchRunner(self.model.path, threads=config.threads)
            else:
                runner = OrtRunner(graph, provider, config.threads)
        self.runner = runner
        self.graph = getattr(runner, "graph", "custom")
        self.max_length = min(config.max_length or self.model.max_length, self.model.max_length)
        window = config.long_text == "window"
        if window and config.stride >= self.max_length - 2:
            raise InputError(f"--stride {config.stride} must be smaller than the max length {self.max_length} minus 2.")
        self.tokenizer = self.model.tokenizer(self.max_length, stride=config.stride if window else 0)
        self.buckets = GPU_BUCKETS if runner.provider == CUDA else None

    # -- stage 1: tokenize and plan (runs in a background thread in score_file)
    def encode(self, texts: list, pairs: list | None = None) -> Encoded:
        n = len(texts)
        errors: list = [None] * n
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
        encoded.plan = plan_batches(
            [len(s) for s in segments], self.config.max_tokens, self.config.max_batch_rows, self.max_length,
            buckets=self.buckets,
        )
        return encoded

    # -- stage 2: run the planned batches and aggregate per row
    def run(self, encoded: Encoded) -> Result:
        k = len(self.model.labels)
        seg_logits = np.empty((len(encoded.segments), k), dtype=np.float32)
        real = padded = 0
        for batch in encoded.plan:
            seqs = [encoded.segments[i] for i in batch.rows]
            ids, mask = pad(seqs, batch.length)
            types, _ = pad([encoded.type_ids[i] for i in batch.rows], batch.length)
            logits = self.runner.run(ids, mask, types)
            if logits.shape != (len(seqs), k):
                raise InputError(f"The graph returned logits of shape {logits.shape}; expected ({len(seqs)}, {k}).")
            seg_logits[batch.rows] = logits
            real += int(mask.sum())
            padded += mask.size
        seg_probs = _sigmoid(seg_logits) if self.model.multi_label else _softmax(seg_logits)
        probs = np.full((encoded.n, k), np.nan, dtype=np.float32)
        logits = np.full((encoded.n, k), np.nan, dtype=np.float32)
        windows = np.bincount(encoded.owner, minlength=encoded.n)
        if len(encoded.owner):
            if self.config.aggregate == "max":
                np.fmax.at(probs, encoded.owner, seg_probs)
                np.fmax.at(logits, encoded.owner, seg_logits)
            else:  # mean over each row's windows (exactly the row's values when it has one)
                sums_p = np.zeros_like(probs)
                sums_l = np.zeros_like(logits)
                np.add.at(sums_p, encoded.owner, seg_probs)
                np.add.at(sums_l, encoded.owner, seg_logits)
                has = windows > 0
                probs[has] = sums_p[has] / windows[has, None]
                logits[has] = sums_l[has] / windows[has, None]
        return Result(probs, logits, encoded.truncated, encoded.errors, windows, real, padded)

    def label_batch(self, batch: pa.RecordBatch, keep: list[str]) -> pa.RecordBatch:
        """Score one Arrow record batch: the `keep` columns, then the result columns (same rows, same order)."""
        config = self.config
        texts = batch.column(config.text_column).to_pylist()
        pairs = batch.column(config.text_pair_column).to_pylist() if config.text_pair_column else None
        return self.assemble(batch, keep, self.run(self.encode(texts, pairs)))

    def assemble(self, batch: pa.RecordBatch, keep: list[str], result: Result) -> pa.RecordBatch:
        columns = {name: batch.column(name) for name in keep}
        columns.update(result_columns(result, self.model.labels, self.model.multi_label, self.config))
        return pa.RecordBatch.from_pydict(columns)

    def logits(self, texts: list, pairs: list | None = None) -> Result:
        return self.run(self.encode(list(texts), pairs))

    def predict(self, texts: list, pairs: list | None = None) -> list[dict]:
        """Labels for in-memory texts: [{'label', 'score', 'probs', 'truncated', 'error'}] in input order."""
        result = self.logits(texts, pairs)
        columns = result_columns(result, self.model.labels, self.model.multi_label, self.config)
        table = pa.table(columns)
        rows = table.to_pylist()
        for row, p in zip(rows, result.probs):
            row["probs"] = None if np.isnan(p).any() else dict(zip(self.model.labels, map(float, p)))
        return rows


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x))).astype(np.float32)


def result_columns(result: Result, labels: list[str], multi_label: bool, config: ScoreConfig) -> dict[str, pa.Array]:
    """The output columns that follow the kept input columns (see ARCHITECTURE.md, output schema)."""
    ok = np.array([e is None for e in result.errors], dtype=bool)
    probs = result.probs
    columns: dict[str, pa.Array] = {}
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
        columns["logits"] = pa.array([list(r) if good else None for r, good in zip(result.logits, ok)], pa.list_(pa.float32()))
    columns["truncated"] = pa.array(result.truncated)
    if config.long_text == "window":
        columns["windows"] = pa.array(result.windows.astype(np.int32))
    columns["error"] = pa.array(result.errors, pa.string())
    return columns


# ------------------------------------------------------------------------------------------ streaming pipeline
class _Stop(Exception):
    pass


def _background(iterable, depth: int, stop: threading.Event):
    """Run a generator in a thread with a bounded queue; exceptions surface in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _preflight(files: list[Path], config: ScoreConfig) -> tuple[list[str], pa.Schema]:
    """Check every input file before any output: text column present and textual, same kept schema."""
    reference = None
    needed = [config.text_column] + ([config.text_pair_column] if config.text_pair_column else [])
    for path in files:
        schema = input_schema(path)
        for column in needed:
            if column not in schema.names:
                raise InputError(
                    f"Column '{column}' not found in {path}; columns are {schema.names}. Use --text-column NAME."
                )
            kind = schema.field(column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise InputError(f"Column '{column}' in {path} has type {kind}; text must be strings.")
        keep = list(config.keep) if config.keep is not None else schema.names
        missing = [c for c in keep if c not in schema.names]
        if missing:
            raise InputError(f"--keep columns {missing} not found in {path}; columns are {schema.names}.")
        kept = pa.schema([schema.field(c) for c in keep])
        if reference is None:
            reference = (path, kept)
        elif not kept.equals(reference[1]):
            raise InputError(
                f"Input files have different schemas: {reference[0]} has {reference[1].names} "
                f"({[str(t) for t in reference[1].types]}), {path} has {kept.names} ({[str(t) for t in kept.types]})."
            )
    return list(reference[1].names), reference[1]


def _total_rows(files: list[Path]) -> int | None:
    import pyarrow.parquet as pq

    if all(str(f).lower().endswith((".parquet", ".pq")) for f in files):
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return None


def score_file(
    inputs,
    output: str | Path,
    model_dir: str | Path,
    config: ScoreConfig | None = None,
    progress=None,
    runner=None,
    **overrides,
) -> dict:
    """Score CSV/Parquet input(s) into `output`; returns the run summary.

    One output row per input row, in input order (rejected rows go to a rejects file with --on-bad-rows reject).
    `progress(rows_done, rows_total_or_None)` is called after each window.
    """
    from dataclasses import replace

    config = replace(config or ScoreConfig(), **overrides)
    started = time.time()
    files = expand_inputs(inputs)
    input_is_dir = any(Path(i).is_dir() for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs))
    keep, kept_schema = _preflight(files, config)
    scorer = Scorer(model_dir, config, runner=runner)
    fmt = config.output_format or ("csv" if str(output) == "-" else output_format(str(output), None))
    layout = OutputLayout(str(output), fmt, files, input_is_dir, config.overwrite, config.rows_per_part)
    rejects = Rejects() if config.on_bad_rows == "reject" else None
    total = _total_rows(files)
    read_cols = list(dict.fromkeys(keep + [config.text_column] + ([config.text_pair_column] if config.text_pair_column else [])))
    stats = {"rows_read": 0, "real_tokens": 0, "padded_tokens": 0, "errors": 0}
    stop = threading.Event()

    def tokenized():
        for file_index, path in enumerate(files):
            rows = 0
            for batch in read_batches(path, read_cols, config.window_rows, rejects):
                rows += batch.num_rows
                texts = batch.column(config.text_column).to_pylist()
                pairs = batch.column(config.text_pair_column).to_pylist() if config.text_pair_column else None
                yield file_index, batch, scorer.encode(texts, pairs)
            if rows == 0 and rejects is None:
                raise InputError(f"{path} has no data rows (empty or header only). Remove it or use --on-bad-rows reject.")

    def scored():
        for file_index, batch, encoded in _background(tokenized(), 2, stop):
            result = scorer.run(encoded)
            stats["real_tokens"] += result.real_tokens
            stats["padded_tokens"] += result.padded_tokens
            stats["errors"] += sum(e is not None for e in result.errors)
            stats["rows_read"] += batch.num_rows
            yield file_index, scorer.assemble(batch, keep, result)

    metadata = {
        "bertbatch.version": _version(),
        "bertbatch.model": scorer.model.name,
        "bertbatch.model_hash": scorer.model.model_hash(None if scorer.graph == "torch" else Path(scorer.graph)),
        "bertbatch.graph": scorer.model.graph_key(None if scorer.graph == "torch" else Path(scorer.graph)),
        "bertbatch.provider": scorer.runner.provider,
    }
    sink, sink_file, schema, written = None, None, None, 0
    try:
        for file_index, out in _background(scored(), 2, stop):
            if schema is None:
                schema = out.schema.with_metadata(metadata)
            new_part = layout.directory and (file_index != sink_file or sink.rows >= config.rows_per_part)
            if sink is None or new_part:
                if sink is not None:
                    sink.commit()
                sink, sink_file = layout.open(schema), file_index
            sink.write(out.cast(schema) if out.schema != schema else out)
            written += out.num_rows
            if progress:
                progress(written, total)
        if sink is None:  # no rows at all: still produce a (header-only) output with the full schema
            schema = _empty_schema(kept_schema, scorer, config).with_metadata(metadata)
            sink = layout.open(schema)
        sink.commit()
        sink = None
        rows_in = stats["rows_read"] + (len(rejects) if rejects else 0)
        if rows_in != written + (len(rejects) if rejects else 0):
            raise InputError(f"Row conservation failed: {rows_in} rows in, {written} written.")
        layout.finish(rejects or Rejects())
    except BaseException:
        stop.set()
        if sink is not None:
            sink.abort()
        layout.cleanup_failed()
        raise
    seconds = time.time() - started
    return {
        "rows_in": stats["rows_read"] + (len(rejects) if rejects else 0),
        "rows_scored": written - stats["errors"],
        "rows_with_error": stats["errors"],
        "rows_rejected": len(rejects) if rejects else 0,
        "rows_written": written,
        "seconds": round(seconds, 3),
        "rows_per_s": round(written / seconds, 1) if seconds else None,
        "tokens_per_s": round(stats["real_tokens"] / seconds, 1) if seconds else None,
        "padding_ratio": round(stats["real_tokens"] / stats["padded_tokens"], 4) if stats["padded_tokens"] else None,
        "provider": scorer.runner.provider,
        "graph": metadata["bertbatch.graph"],
        "threads": getattr(scorer.runner, "threads", None),
        "output": "-" if layout.stdout else str(layout.output),
        "parts": [str(p) for p in layout.parts] if layout.directory else None,
        "rejects": str(layout.rejects_path) if rejects and len(rejects) else None,
    }


def _empty_schema(kept: pa.Schema, scorer: Scorer, config: ScoreConfig) -> pa.Schema:
    empty = Result(np.zeros((0, len(scorer.model.labels)), np.float32), np.zeros((0, len(scorer.model.labels)), np.float32),
                   np.zeros(0, bool), [], np.zeros(0, np.int64), 0, 0)
    cols = result_columns(empty, scorer.model.labels, scorer.model.multi_label, config)
    return pa.schema(list(kept) + [pa.field(k, v.type) for k, v in cols.items()])


def _version() -> str:
    from . import __version__

    return __version__
