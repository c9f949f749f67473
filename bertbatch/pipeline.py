"""`score_file`: stream tables through a Scorer into files, crash-safe and resumable.

Three overlapped stages joined by bounded queues: read + tokenize | run the graph | write. Directory outputs
are jobs: one part per (input file, chunk of `rows_per_part` rows), named `part-FFFFF-CCCCC`, each committed
atomically and recorded in `_manifest.json`; windows never cross a part boundary, so a resumed run batches
(and so computes) exactly what an uninterrupted one would.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .config import ScoreConfig
from .errors import InputError
from .io import Rejects, expand_inputs, input_schema, output_format, read_batches
from .job import Job, fingerprint
from .output import OutputLayout
from .score import Result, Scorer, output_schema

log = logging.getLogger(__name__)


def score_file(inputs, output, model_dir, config: ScoreConfig | None = None, progress=None, runner=None,
               **overrides) -> dict:
    """Score CSV/Parquet input(s) into `output`; returns the run summary.

    One output row per input row, in input order (with --on-bad-rows reject, unreadable rows go to a
    rejects file instead and are counted). `progress(rows_done, rows_total_or_None)` is called per window.
    """
    config = replace(config or ScoreConfig(), **overrides)
    started = time.time()
    files = expand_inputs(inputs)
    input_is_dir = any(Path(i).is_dir() for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs))
    keep, kept_schema = check_inputs(files, config)
    scorer = Scorer(model_dir, config, runner=runner)
    fmt = config.output_format or ("csv" if str(output) == "-" else output_format(str(output), None))
    layout = OutputLayout(str(output), fmt, files, input_is_dir, config.overwrite, config.resume)
    graph_path = None if scorer.graph in ("torch", "fake", "custom") else Path(scorer.graph)
    metadata = {
        "bertbatch.version": _version(),
        "bertbatch.model": scorer.model.name,
        "bertbatch.model_hash": scorer.model.model_hash(graph_path),
        "bertbatch.graph": scorer.model.graph_key(graph_path) if graph_path or scorer.graph == "torch" else scorer.graph,
        "bertbatch.provider": scorer.runner.provider,
    }
    job = None
    if layout.directory:
        fp = fingerprint(files, metadata["bertbatch.model_hash"], metadata["bertbatch.graph"],
                         metadata["bertbatch.provider"], config, fmt)
        job = Job.start(layout.output, fp, config.resume)
        if job.complete:  # re-running a finished job changes nothing
            return _summary(job.state, scorer, metadata, layout, started, resumed=True)
    writer = _Writer(layout, job, kept_schema, scorer, config, metadata)
    rejects = Rejects() if config.on_bad_rows == "reject" else None
    stop, threads = threading.Event(), []
    total = _total_rows(files)
    try:
        for item in _background(_scored(scorer, files, keep, config, rejects, job, stop, threads), 2, stop, threads):
            writer.take(*item, rejects)
            if progress and item[2] is not None:
                progress(writer.rows_this_run + writer.rows_before, total)
        totals = writer.close(rejects, total)
    except BaseException as exc:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        writer.abort()
        if isinstance(exc, InputError) and not config.resume:
            layout.remove_outputs()  # bad data fails again on retry: leave nothing under the final name
        raise
    return _summary(totals, scorer, metadata, layout, started, resumed=config.resume)


# ------------------------------------------------------------------------------------------------- stages
def _windows(files, columns, config: ScoreConfig, rejects, job: Job | None):
    """(file index, chunk, batch) windows in input order, cut at part boundaries, skipping committed rows.

    After each file: (file index, None, None), so the writer can close the file's last part."""
    per_part = config.rows_per_part
    for index, path in enumerate(files):
        if job and job.file_done(index):
            continue
        skip = job.rows_done(index) if job else 0
        pos = seen = 0
        for batch in read_batches(path, columns, config.window_rows, rejects):
            seen += batch.num_rows
            if pos + batch.num_rows <= skip:
                pos += batch.num_rows
                continue
            if pos < skip:
                batch, pos = batch.slice(skip - pos), skip
            while batch.num_rows:
                chunk = pos // per_part
                piece, batch = batch.slice(0, (chunk + 1) * per_part - pos), batch.slice((chunk + 1) * per_part - pos)
                pos += piece.num_rows
                yield index, chunk, piece
        if seen == 0 and rejects is None:
            raise InputError(f"{path} has no data rows (empty or header only). Remove it or use --on-bad-rows reject.")
        yield index, None, None


def _scored(scorer: Scorer, files, keep, config: ScoreConfig, rejects, job, stop, threads):
    columns = config.read_columns(keep)

    def tokenized():
        for index, chunk, batch in _windows(files, columns, config, rejects, job):
            if batch is None:
                yield index, chunk, None, None
                continue
            yield index, chunk, batch, scorer.encode_batch(batch)

    for index, chunk, batch, encoded in _background(tokenized(), 2, stop, threads):
        if batch is None:
            yield index, chunk, None, None
            continue
        result = scorer.run(encoded)
        yield index, chunk, scorer.assemble(batch, keep, result), result


class _Writer:
    """Owns the open sink: switches parts, commits them, records them in the job manifest."""

    def __init__(self, layout: OutputLayout, job: Job | None, kept: pa.Schema, scorer: Scorer, config, metadata):
        self.layout, self.job, self.config = layout, job, config
        self.schema = output_schema(kept, scorer.model.labels, scorer.model.multi_label, config).with_metadata(metadata)
        self.sink = self.key = None
        self.rows_this_run = self.real = self.padded = self.errors = self.part_errors = 0
        self.rows_before = sum(p["rows"] for p in job.state["parts"]) if job else 0
        self.known_rejects = job.reject_keys() if job else set()
        self.rejects_taken = 0

    def take(self, index, chunk, out, result: Result | None, rejects) -> None:
        if out is None:  # end of input file `index`
            if self.layout.directory and self.key and self.key[0] == index:
                self._commit(rejects, last=True)
            elif self.job and self.layout.directory:
                self.job.mark_file_done(index)
            return
        key = (index, chunk) if self.layout.directory else (0, 0)
        if self.sink is not None and key != self.key:
            self._commit(rejects, last=False)
        if self.sink is None:
            self.sink, self.key = self.layout.open(self.schema, *key), key
        self.sink.write(out.cast(self.schema) if out.schema != self.schema else out)
        self.rows_this_run += out.num_rows
        self.real += result.real_tokens
        self.padded += result.padded_tokens
        errors = sum(e is not None for e in result.errors)
        self.errors += errors
        self.part_errors += errors

    def _new_rejects(self, rejects) -> list[dict]:
        if rejects is None:
            return []
        fresh = [r for r in rejects.rows[self.rejects_taken:] if (r["file"], r["where"]) not in self.known_rejects]
        self.rejects_taken = len(rejects.rows)
        return fresh

    def _commit(self, rejects, last: bool) -> None:
        sink, (index, chunk) = self.sink, self.key
        sink.commit()
        self.sink = self.key = None
        if self.job:
            self.job.record(sink.path.name, index, chunk, sink.rows, self.part_errors, self._new_rejects(rejects), last)
        self.part_errors = 0

    def close(self, rejects, expected_rows: int | None) -> dict:
        if self.sink is not None:
            self._commit(rejects, last=True)
        elif self.key is None and not self.layout.directory and self.rows_this_run == 0:
            self.layout.open(self.schema, 0, 0).commit()  # no rows at all: a header-only output, full schema
        if self.job:
            self._new_rejects(rejects)
            all_rejects = self.job.all_rejects()
            written = self.layout.verify_parts(self.job.state["parts"])
            self.errors = self.job.errors()
        else:
            all_rejects = self._new_rejects(rejects)
            written = self.rows_this_run
        rows_in = written + len(all_rejects)
        if expected_rows is not None and rows_in != expected_rows:
            raise InputError(f"Row conservation failed: the inputs hold {expected_rows} rows, {rows_in} were accounted for.")
        totals = {"rows_in": rows_in, "rows_written": written, "rows_rejected": len(all_rejects),
                  "rows_with_error": self.errors, "rows_this_run": self.rows_this_run,
                  "real_tokens": self.real, "padded_tokens": self.padded}
        self.layout.finish(all_rejects, self.job, totals)
        return totals

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()
            self.sink = None


# ------------------------------------------------------------------------------------------------- helpers
def _background(iterable, depth: int, stop: threading.Event, threads: list):
    """Run a generator in a thread with a bounded queue; its exceptions surface in the consumer.

    Both sides poll `stop`, so after a failure anywhere every stage ends and can be joined: a thread left
    inside native code (ONNX Runtime, tokenizers) at interpreter exit aborts the process."""
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
    threads.append(thread)
    while True:
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return
            continue
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def check_inputs(files: list[Path], config: ScoreConfig) -> tuple[list[str], pa.Schema]:
    """Check every input file before any output: text column present and textual, same kept schema."""
    reference = None
    needed = config.text_columns
    for path in files:
        schema = input_schema(path)
        for column in needed:
            if column not in schema.names:
                raise InputError(f"Column '{column}' not found in {path}; columns are {schema.names}. Use --text-column NAME.")
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
    """Row count from Parquet metadata (an independent check of conservation); None for CSV."""
    if all(str(f).lower().endswith((".parquet", ".pq")) for f in files):
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return None


def _summary(totals: dict, scorer: Scorer, metadata: dict, layout: OutputLayout, started: float, resumed: bool) -> dict:
    seconds = time.time() - started
    run_rows = totals.get("rows_this_run", 0)
    return {
        "rows_in": totals["rows_in"],
        "rows_written": totals["rows_written"],
        "rows_scored": totals["rows_written"] - totals["rows_with_error"],
        "rows_with_error": totals["rows_with_error"],
        "rows_rejected": totals["rows_rejected"],
        "rows_this_run": run_rows,
        "resumed": resumed,
        "seconds": round(seconds, 3),
        "rows_per_s": round(run_rows / seconds, 1) if seconds else None,
        "tokens_per_s": round(totals.get("real_tokens", 0) / seconds, 1) if seconds else None,
        "padding_ratio": round(totals["real_tokens"] / totals["padded_tokens"], 4) if totals.get("padded_tokens") else None,
        "provider": metadata["bertbatch.provider"],
        "graph": metadata["bertbatch.graph"],
        "threads": getattr(scorer.runner, "threads", None),
        "output": "-" if layout.stdout else str(layout.output),
        "parts": [str(p) for p in layout.list_parts()] if layout.directory else None,
        "rejects": str(layout.rejects_path) if totals["rows_rejected"] else None,
    }


def _version() -> str:
    from . import __version__

    return __version__
