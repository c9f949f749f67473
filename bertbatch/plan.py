"""The job plan every engine shares: set-up (`plan_job`), the one windowing function (`windows`), and wrap-up
(`run_plan`'s row conservation, manifest and `_SUCCESS`; `summarize`).

An engine is a mover: it hands record batches from the plan's inputs to Scorers and the scored batches back
to the plan's Writer. The local pipeline moves them with threads in this process, the Ray engine with an actor
pool on a cluster (the driver still writes, through the same Writer); `score_batches` moves a caller's Arrow
stream with no files at all; Spark reads and writes with its own commit protocol, so it takes the plan's checks,
refusals and summary but not its Writer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa

from .config import ScoreConfig
from .errors import InputError, ModelError
from .job import Job, fingerprint, model_files_digest
from .sink import OutputLayout, Writer, output_format, refuse_existing, refuse_input_overlap
from .source import Rejects, check_inputs, expand_inputs, file_format, input_is_directory, read_batches, total_rows
from .storage import is_uri, local_file_path, local_model_dir
from .summary import make_summary


@dataclass
class JobPlan:
    """Everything decided before the first row is scored: inputs, columns, model, metadata, output layout."""

    config: ScoreConfig
    files: list
    keep: list[str]
    kept_schema: pa.Schema
    scorer: object  # the driver's Scorer: its model, graph, provider and settings decide the metadata
    fmt: str
    metadata: dict
    model_files: dict
    layout: OutputLayout
    engine: str = "local"
    started: float = field(default_factory=time.time)


@dataclass(frozen=True)
class BatchCounts:
    """What the Writer counts of a labeled batch when no Result came with it (a batch scored elsewhere)."""

    errors: list
    real_tokens: int
    padded_tokens: int


def plan_job(inputs, output, model_dir, config: ScoreConfig, runner=None, engine: str = "local",
             prepare=None) -> JobPlan:
    """Expand and check the inputs, open the model, fix the metadata, and claim the output (locked for a job).

    `prepare(scorer)`: an engine's own set-up (a cluster's probe), run before the output is claimed, so that a
    cluster that cannot score leaves no output behind. The caller releases `plan.layout` when the job ends
    (run_plan does)."""
    started = time.time()
    files = expand_inputs(inputs, config.partition_type_map)
    if str(output) == "-" and config.on_bad_rows == "reject" and not config.rejects:
        raise InputError("-o - with --on-bad-rows reject needs --rejects FILE: stdout carries the scored rows only, "
                         "the rejected rows go to FILE.")
    keep, kept_schema = check_inputs(files, config)
    scorer = open_scorer(local_model_dir(model_dir, config.model_cache), config, runner)
    fmt = config.output_format or ("csv" if str(output) == "-" else output_format(str(output), None))
    model_files, metadata = model_metadata(scorer)
    if prepare is not None:
        prepare(scorer)
    layout = OutputLayout(str(output), fmt, files, input_is_directory(inputs), config.overwrite, config.resume,
                          config.rejects, config.partition_by, explicit_format=config.output_format,
                          input_dirs=_input_dirs(inputs), reject_mode=config.on_bad_rows == "reject")
    return JobPlan(config, files, keep, kept_schema, scorer, layout.format, metadata, model_files, layout, engine,
                   started)


def binary_as_text(kept_schema: pa.Schema, fmt: str, config: ScoreConfig) -> tuple[str, ...]:
    """Kept binary columns the output must hold as text: every one in CSV/JSONL, partition keys in any format."""
    binary = [f.name for f in kept_schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    return tuple(name for name in binary if fmt != "parquet" or name in (config.partition_by or ()))


def _input_dirs(inputs) -> list[Path]:
    """The local directories among the inputs: nothing bertbatch writes may land inside one."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths = [Path(local_file_path(i)) for i in items if not is_uri(str(i))]
    return [p for p in paths if p.is_dir()]


def model_metadata(scorer) -> tuple[dict, dict]:
    """(sha256 of the model files that run, the output's `bertbatch.*` metadata) of the Scorer."""
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
    return model_files, metadata


def run_plan(plan: JobPlan, mover, progress=None) -> dict:
    """Run the job: start (or resume) it, write every scored batch the mover yields, finish it; the summary.

    `mover(plan, job, rejects, stop, threads)` yields (file index, chunk, labeled batch, counts) in input
    order, and (file index, None, None, None) after each file; `counts` has the batch's `errors`,
    `real_tokens` and `padded_tokens`. Threads it starts go in `threads` and end when `stop` is set."""
    import threading

    config, layout = plan.config, plan.layout
    try:
        job = None
        if layout.directory:
            resolved = replace(config, truncation=plan.scorer.truncation, head_tokens=plan.scorer.head_tokens)
            fp = fingerprint(plan.files, plan.model_files, plan.metadata["bertbatch.graph"],
                             plan.metadata["bertbatch.provider"], resolved, plan.fmt, plan.scorer.max_length,
                             plan.scorer.calibration)
            job = Job.start(layout.root, fp, config.resume, layout.run_id, replaces=layout.replaces)
            if config.resume:
                layout.verify_parts(job.state["parts"])  # a part lost or damaged since the crash: say so now
            if job.complete:  # re-running a finished job changes nothing (a kill before `_SUCCESS`: write it)
                layout.finish_success()
                return summarize(plan, job.state, resumed=True)
        writer = Writer(layout, job, plan.kept_schema, plan.scorer, config, plan.metadata)
        rejects = Rejects() if config.on_bad_rows == "reject" else None
        stop, threads = threading.Event(), []
        total = total_rows(plan.files)
        try:
            for item in mover(plan, job, rejects, stop, threads):
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
        return summarize(plan, totals, resumed=config.resume)
    finally:
        layout.release()


# ------------------------------------------------------------------------------------------------ windows
def windows(batches, rows: int, per_part: int | None = None, skip: int = 0):
    """(chunk, batch) windows of exactly `rows` rows (the last of a part or of the input may be shorter),
    whatever sizes `batches` come in, never crossing a part boundary (every `per_part` rows), after skipping
    the first `skip` rows. Every engine windows with this function: a window is what one Scorer call sorts
    by length, and a resumed job (which skips whole parts) cuts the same windows as an uninterrupted one."""
    pending: list[pa.RecordBatch] = []
    held = pos = start = 0  # rows held in `pending`; rows passed (skipped, yielded or held); first held row
    for batch in batches:
        if pos + batch.num_rows <= skip:
            pos += batch.num_rows
            continue
        if pos < skip:
            batch, pos = batch.slice(skip - pos), skip
        while batch.num_rows:
            if not held:
                start = pos
            room = rows - held
            if per_part:
                room = min(room, (start // per_part + 1) * per_part - pos)
            piece, batch = batch.slice(0, room), batch.slice(room)
            pending.append(piece)
            held += piece.num_rows
            pos += piece.num_rows
            if held == rows or (per_part and pos % per_part == 0):
                yield (start // per_part if per_part else 0), _combine(pending)
                pending, held = [], 0
    if held:
        yield (start // per_part if per_part else 0), _combine(pending)


def _combine(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def file_windows(files, columns: list[str], config: ScoreConfig, rejects, job: Job | None, only: int | None = None,
                 schema: pa.Schema | None = None, as_text: tuple[str, ...] = ()):
    """(file index, chunk, batch) windows of the input files in order, skipping the rows a resumed job has
    committed; after each file (file index, None, None), so the writer can close the file's last part.
    `only`: that file alone (a distributed read task). Columns `schema` (the inputs' unified kept schema) names
    are cast to its types; `as_text` binary columns are decoded as UTF-8 (see binary_as_text)."""
    for index, path in enumerate(files):
        if (only is not None and index != only) or (job and job.file_done(index)):
            continue
        skip = job.rows_done(index) if job else 0
        seen = [0]

        def counted(batches):
            for batch in batches:
                seen[0] += batch.num_rows
                yield batch

        for chunk, batch in windows(counted(read_batches(path, columns, config.window_rows, rejects, schema, as_text)),
                                    config.window_rows, config.rows_per_part, skip):
            yield index, chunk, batch
        if seen[0] == 0 and rejects is None and file_format(path) != "parquet":  # empty Parquet: check_inputs
            raise InputError(f"{path} has no data rows (empty or header only). Remove it or use --on-bad-rows reject.")
        yield index, None, None


# ------------------------------------------------------------------------------------- distributed set-up
def refuse_non_parquet_output(output, config: ScoreConfig, engine: str) -> None:
    """What an engine that writes only a Parquet directory (Spark, Ray) refuses: stdout, another format."""
    if str(output) == "-":
        raise InputError(f"The {engine} engine writes a Parquet directory; it cannot stream to stdout. Give -o a path.")
    if config.output_format not in (None, "parquet"):
        raise InputError(f"The {engine} engine writes Parquet only; --format {config.output_format} is available "
                         "with --engine local. Leave --format out or use --engine local.")
    fmt = output_format(str(output), None)
    if fmt != "parquet":
        raise InputError(f"The {engine} engine writes Parquet only; {output} names a {fmt} file. Give -o a "
                         "directory path or use --engine local.")


def check_directory_output(output, files: list, config: ScoreConfig, engine: str) -> None:
    """Refusals of an engine that writes a Parquet directory with its own commit protocol (Spark)."""
    refuse_non_parquet_output(output, config, engine)
    text = str(output)
    if "://" in text and not text.startswith("file:"):
        return  # a remote file system: the engine's own exists check decides
    path = Path(text.removeprefix("file://").removeprefix("file:"))
    refuse_input_overlap(path, files, directory=True)
    refuse_existing(path, config.overwrite)


# ------------------------------------------------------------------------------------------------ wrap-up
def summarize(plan: JobPlan, totals: dict, resumed: bool, **extra) -> dict:
    """The run summary of a job the plan's Writer wrote (any engine)."""
    seconds = time.time() - plan.started
    run_rows = totals.get("rows_this_run", 0)
    scorer, layout = plan.scorer, plan.layout
    values = dict(
        engine=plan.engine,
        rows_in=totals["rows_in"],
        rows_written=totals["rows_written"],
        rows_scored=totals["rows_written"] - totals["rows_with_error"],
        rows_with_error=totals["rows_with_error"],
        rows_abstained=totals.get("rows_abstained", 0),  # --min-score: scored and written, without a label
        rows_rejected=totals["rows_rejected"],
        rows_this_run=run_rows,
        resumed=resumed,
        seconds=round(seconds, 3),
        rows_per_s=round(run_rows / seconds, 1) if seconds else None,
        tokens_per_s=round(totals.get("real_tokens", 0) / seconds, 1) if seconds else None,
        padding_ratio=round(totals["real_tokens"] / totals["padded_tokens"], 4) if totals.get("padded_tokens") else None,
        provider=plan.metadata["bertbatch.provider"],
        graph=plan.metadata["bertbatch.graph"],
        threads=scorer.runner.threads,
        settings=scorer.settings_reason,  # why this graph, budget and threads: explicit, tuned, or safe defaults
        tokenizer=scorer.tokenizer_backend,  # nanotoken or the tokenizers library (same ids)
        calibration=scorer.calibration,  # the temperature(s) applied to probabilities and score, or None
        truncation=scorer.truncation_label,  # head | tail | head+tail:N | window: which tokens were read
        output="-" if layout.stdout else str(layout.output),
        parts=[str(p) for p in layout.list_parts()] if layout.directory else None,
        rejects=str(layout.rejects_path) if layout.rejects_path and plan.config.on_bad_rows == "reject" else None,
    )
    values.update(extra)
    return make_summary(**values)


def conserve(rows_in: int, rows_written: int, output) -> None:
    """Row conservation of an engine that counts both sides itself (Spark)."""
    if rows_in != rows_written:
        raise InputError(f"Row conservation failed: {rows_in} rows in, {rows_written} written to {output}.")


# ------------------------------------------------------------------------------------------------ helpers
def open_scorer(model_dir, config: ScoreConfig, runner=None):
    """The Scorer; a graph that ONNX / ONNX Runtime cannot load (truncated, corrupt) is a ModelError."""
    from .score import Scorer

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


def _torch_weights(model_path: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_path / name).is_file():
            return model_path / name
    return None


def _version() -> str:
    from . import __version__

    return __version__
