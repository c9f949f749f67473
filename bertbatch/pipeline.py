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

from .config import ScoreConfig
from .errors import InputError, ModelError
from .job import Job, fingerprint, model_files_digest
from .score import Scorer
from .sink import OutputLayout, Writer, output_format
from .summary import make_summary
from .storage import local_model_dir
from .source import Rejects, check_inputs, expand_inputs, input_is_directory, read_batches, total_rows

log = logging.getLogger(__name__)


def score_file(inputs, output, model_dir, config: ScoreConfig | None = None, progress=None, runner=None,
               **overrides) -> dict:
    """Score CSV/Parquet input(s) into `output`; returns the run summary.

    One output row per input row, in input order (with --on-bad-rows reject, unreadable rows go to a
    rejects file instead and are counted). `progress(rows_done, rows_total_or_None)` is called per window.
    """
    config = replace(config or ScoreConfig(), **overrides)
    started = time.time()
    files = expand_inputs(inputs, config.partition_type_map)
    input_is_dir = input_is_directory(inputs)
    if str(output) == "-" and config.on_bad_rows == "reject" and not config.rejects:
        raise InputError("-o - with --on-bad-rows reject needs --rejects FILE: stdout carries the scored rows only, "
                         "the rejected rows go to FILE.")
    keep, kept_schema = check_inputs(files, config)
    scorer = _open_scorer(local_model_dir(model_dir, config.model_cache), config, runner)
    fmt = config.output_format or ("csv" if str(output) == "-" else output_format(str(output), None))
    graph_path = scorer.graph_file
    weights = graph_path or (_torch_weights(scorer.model.path) if scorer.graph == "torch" else None)
    model_files = model_files_digest(scorer.model.path, weights)
    metadata = {
        "bertbatch.version": _version(),
        "bertbatch.model": scorer.model.name,
        # of the bytes that run, not the hash recorded at export
        "bertbatch.model_hash": next(iter(model_files.values())) if weights is not None and model_files else "",
        "bertbatch.graph": scorer.model.graph_key(graph_path) if graph_path or scorer.graph == "torch" else scorer.graph,
        "bertbatch.provider": scorer.runner.provider,
    }
    layout = OutputLayout(str(output), fmt, files, input_is_dir, config.overwrite, config.resume, config.rejects,
                          config.partition_by)
    try:
        return _run(files, keep, kept_schema, scorer, config, layout, metadata, model_files, fmt, progress, started)
    finally:
        layout.release()


def _run(files, keep, kept_schema, scorer, config, layout, metadata, model_files, fmt, progress, started) -> dict:
    job = None
    if layout.directory:
        resolved = replace(config, truncation=scorer.truncation, head_tokens=scorer.head_tokens)  # the model's
        fp = fingerprint(files, model_files, metadata["bertbatch.graph"], metadata["bertbatch.provider"], resolved,
                         fmt, scorer.max_length)
        job = Job.start(layout.output, fp, config.resume, layout.run_id)
        if config.resume:
            layout.verify_parts(job.state["parts"])  # a part lost or damaged since the crash: say so now
        if job.complete:  # re-running a finished job changes nothing (a kill before `_SUCCESS`: write it)
            layout.finish_success()
            return _summary(job.state, scorer, metadata, layout, started, resumed=True, config=config)
    writer = Writer(layout, job, kept_schema, scorer, config, metadata)
    rejects = Rejects() if config.on_bad_rows == "reject" else None
    stop, threads = threading.Event(), []
    total = total_rows(files)
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
    return _summary(totals, scorer, metadata, layout, started, resumed=config.resume, config=config)


def _torch_weights(model_path: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_path / name).is_file():
            return model_path / name
    return None


def _open_scorer(model_dir, config: ScoreConfig, runner) -> Scorer:
    """The Scorer; a graph that ONNX / ONNX Runtime cannot load (truncated, corrupt) is a ModelError."""
    try:
        return Scorer(model_dir, config, runner=runner)
    except Exception as exc:
        module = type(exc).__module__ or ""
        if not module.startswith(("onnx", "google.protobuf")):
            raise
        from .modeldir import ModelDir
        from .runtime import resolve_provider

        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        graph = ModelDir.open(model_dir).graph_path(config.graph, resolve_provider(config.provider))
        raise ModelError(f"Cannot load the graph {graph}: {first}. The file is damaged or not ONNX; "
                         f"run `bertbatch export {model_dir}` again.") from None


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


def _summary(totals: dict, scorer: Scorer, metadata: dict, layout: OutputLayout, started: float, resumed: bool,
             config: ScoreConfig) -> dict:
    seconds = time.time() - started
    run_rows = totals.get("rows_this_run", 0)
    return make_summary(
        engine="local",
        rows_in=totals["rows_in"],
        rows_written=totals["rows_written"],
        rows_scored=totals["rows_written"] - totals["rows_with_error"],
        rows_with_error=totals["rows_with_error"],
        rows_rejected=totals["rows_rejected"],
        rows_this_run=run_rows,
        resumed=resumed,
        seconds=round(seconds, 3),
        rows_per_s=round(run_rows / seconds, 1) if seconds else None,
        tokens_per_s=round(totals.get("real_tokens", 0) / seconds, 1) if seconds else None,
        padding_ratio=round(totals["real_tokens"] / totals["padded_tokens"], 4) if totals.get("padded_tokens") else None,
        provider=metadata["bertbatch.provider"],
        graph=metadata["bertbatch.graph"],
        threads=scorer.runner.threads,
        settings=scorer.settings_reason,  # why this graph, budget and threads: explicit, tuned, or safe defaults
        tokenizer=scorer.tokenizer_backend,  # nanotoken or the tokenizers library (same ids)
        truncation=scorer.truncation_label,  # head | tail | head+tail:N | window: which tokens were read
        output="-" if layout.stdout else str(layout.output),
        parts=[str(p) for p in layout.list_parts()] if layout.directory else None,
        rejects=str(layout.rejects_path) if layout.rejects_path and config.on_bad_rows == "reject" else None,
    )


def _version() -> str:
    from . import __version__

    return __version__
