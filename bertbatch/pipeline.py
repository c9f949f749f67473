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
from dataclasses import replace

from .config import ScoreConfig
from .plan import binary_as_text, file_windows, plan_job, run_plan

log = logging.getLogger(__name__)


def score_file(inputs, output, model_dir, config: ScoreConfig | None = None, progress=None, runner=None,
               **overrides) -> dict:
    """Score CSV/Parquet input(s) into `output`; returns the run summary.

    One output row per input row, in input order (with --on-bad-rows reject, unreadable rows go to a
    rejects file instead and are counted). `progress(rows_done, rows_total_or_None)` is called per window.
    Set-up and wrap-up are the job plan's (plan.py); this module only moves batches, with threads.
    """
    config = replace(config or ScoreConfig(), **overrides)
    return run_plan(plan_job(inputs, output, model_dir, config, runner), _scored, progress)


# ------------------------------------------------------------------------------------------------- stages
def _scored(plan, job, rejects, stop, threads):
    """read + tokenize | run the graph, each in its own thread; the caller writes."""
    scorer, keep, config = plan.scorer, plan.keep, plan.config
    columns = config.read_columns(keep)

    def tokenized():
        as_text = binary_as_text(plan.kept_schema, plan.fmt, config)
        for index, chunk, batch in file_windows(plan.files, columns, config, rejects, job, schema=plan.kept_schema,
                                                as_text=as_text):
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
