"""Distributed scoring: the same `Scorer.label_batch` inside Spark's `mapInArrow`, for data that outgrows a machine.

Arrow record batches go from Spark straight into the scorer and back, without pandas. Each Python worker loads
the model once (a module-level cache) and picks its provider from what Spark gave the task: CUDA when the task
holds a `gpu` resource and onnxruntime offers CUDA, else CPU with `spark.task.cpus` intra-op threads.

Executors read the model directory at the driver's path (a shared file system, or local mode) or get a slim
copy through `SparkContext.addFile`; either way they check the sha256 of each file they load against the
driver's, so a node with a different model fails loudly instead of labeling with it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from functools import partial, reduce
from pathlib import Path

import pyarrow as pa

from .config import ScoreConfig
from .errors import InputError, ModelError, require
from .manifest import sha256_file
from .modeldir import ModelDir
from .runtime import CPU, CUDA, available_providers, resolve_provider
from .score import Scorer, output_schema
from .sink import output_format, refuse_existing, refuse_input_overlap
from .source import check_inputs, csv_delimiter, expand_inputs, file_format
from .summary import make_summary

log = logging.getLogger(__name__)

# Spark's CSV reader set up like bertbatch.source's: header row, every column a string as written (no inference,
# no null markers), RFC 4180 quotes ("" inside quotes), quoted newlines, and a bad row fails the job.
# An empty unquoted field still comes back null from Spark whatever nullValue says: _read turns it into "".
CSV_OPTIONS = {
    "header": "true",
    "inferSchema": "false",
    "multiLine": "true",
    "quote": '"',
    "escape": '"',
    "nullValue": "\u0000bertbatch-no-null\u0000",  # a marker no real field holds
    "emptyValue": "",
    "mode": "FAILFAST",
    "encoding": "UTF-8",
}
# Files needed to score besides the ONNX graph; weights, checkpoints and data stay behind when shipping.
SHIPPED_SUFFIXES = (".json", ".txt", ".model")
GRAPH_HASHED = ("config.json", "tokenizer.json")
_WORKER_CACHE_SIZE = 2


# ------------------------------------------------------------------------------------------------ public API
def score(df, model_dir: str | Path, text_col: str | None = None, config: ScoreConfig | None = None, *,
          ship_model: bool | None = None, **overrides):
    """Label a Spark DataFrame: the kept columns (`config.keep`, default all), then the result columns.

    Same output columns as `bertbatch score`: label, score, prob_<label>/top_k/logits on request, truncated,
    error. Null or empty text gives a null label and an error reason, never a dropped row. Lazy: nothing runs
    until an action (write, count). `text_col` defaults to `config.text_column` ('text').
    `ship_model`: None copies the model directory to executors with addFile unless the master is local;
    False reads `model_dir` at the same path on every executor (a shared file system).
    """
    _require_spark()
    config = replace(config or ScoreConfig(), **overrides)
    if text_col is not None:
        config = replace(config, text_column=text_col)
    return _score(df, model_dir, config, ship_model)[0]


def score_files(inputs, output: str | Path, model_dir: str | Path, config: ScoreConfig | None = None,
                master: str = "local[*]", *, ship_model: bool | None = None, partitions: int | None = None,
                **overrides) -> dict:
    """Score CSV/Parquet input(s) (file, list, directory, glob) with Spark into a Parquet directory; the summary.

    Uses the active SparkSession if there is one, else starts one on `master` (and stops it at the end).
    Input with fewer partitions than Spark's default parallelism (one multi-line CSV file is one partition)
    is spread over `partitions` (default: that parallelism). Output row order is Spark's, not the input's:
    keep an ID column. The output is written with Spark's commit protocol (`_SUCCESS` once complete).
    """
    _require_spark()
    config = replace(config or ScoreConfig(), **overrides)
    _check_engine_options(config, output)
    files = expand_inputs(inputs)
    keep, _ = check_inputs(files, config)
    _check_output(output, files, config.overwrite)
    config = replace(config, keep=tuple(keep))
    started = time.time()
    spark, created = _session(master)
    session_seconds = time.time() - started
    try:
        counts = _write_scored(spark, files, str(output), model_dir, config, ship_model, partitions)
    finally:
        if created:
            spark.stop()
    seconds = time.time() - started
    job_seconds = seconds - session_seconds
    return make_summary(
        engine="spark",
        rows_in=counts["rows_in"],
        rows_written=counts["rows_written"],
        rows_scored=counts["rows_written"] - counts["errors"],
        rows_with_error=counts["errors"],
        rows_rejected=0,  # Spark reads CSV in FAILFAST mode: a bad row fails the job
        rows_this_run=counts["rows_written"],
        resumed=False,
        seconds=round(seconds, 3),
        session_seconds=round(session_seconds, 3),  # starting Spark (0 with an active session)
        rows_per_s=round(counts["rows_written"] / job_seconds, 1) if job_seconds else None,  # after the start
        output=str(output),
        master=counts["master"],
        partitions=counts["partitions"],
        providers=counts["providers"],  # "<provider> <graph> threads=<n>" -> rows, as run on the executors
    )


def _write_scored(spark, files, output: str, model_dir, config: ScoreConfig, ship_model, partitions) -> dict:
    """Read, score and write with Spark's commit protocol; counts read back from the written Parquet."""
    from pyspark.sql import functions as F

    df = _read(spark, files, config.read_columns(list(config.keep)))
    spread = partitions or spark.sparkContext.defaultParallelism
    # one multi-line CSV file is one partition (it cannot be split): spread its rows over the workers
    out, tally = _score(df.repartition(spread) if df.rdd.getNumPartitions() < spread else df,
                        model_dir, config, ship_model, tally=True)
    mode = "overwrite" if config.overwrite else "errorifexists"
    try:
        rows_in = df.count()
        out.write.mode(mode).option("compression", "zstd").option("maxRecordsPerFile", config.rows_per_part).parquet(output)
    except Exception as exc:  # Py4J/PySpark errors: surface ours (and common ones) as bertbatch errors
        raise _translate(exc, output) from exc
    written = spark.read.parquet(output)
    rows_written = written.count()
    if rows_in != rows_written:
        raise InputError(f"Row conservation failed: {rows_in} rows in, {rows_written} written to {output}.")
    return {
        "rows_in": rows_in,
        "rows_written": rows_written,
        "errors": written.where(F.col("error").isNotNull()).count(),
        "providers": dict(tally.value),
        "master": spark.sparkContext.master,
        "partitions": out.rdd.getNumPartitions(),
    }


# ---------------------------------------------------------------------------------------------- driver side
def _require_spark() -> None:
    require("pyspark", "spark")
    require("pandas", "spark")  # mapInArrow passes no data through pandas, but pyspark refuses to run without it


@dataclass(frozen=True)
class ModelShipment:
    """Where executors find the model directory, and the driver's sha256 of each file they may load."""

    path: str  # the driver's absolute path: read as is on executors unless shipped
    shipped: str | None  # the SparkFiles name when the directory travels with the job
    hashes: tuple  # ((path relative to the model directory, sha256), ...)

    def root(self) -> Path:
        if self.shipped:
            from pyspark import SparkFiles

            return Path(SparkFiles.get(self.shipped))
        return Path(self.path)

    def verify(self, root: Path, relative: list[str]) -> None:
        """Raise ModelError when a file here is missing or differs from the driver's."""
        expected = dict(self.hashes)
        where = f"executor {socket.gethostname()}"
        fix = ("The driver's copy changed after the job started: run it again." if self.shipped else
               "Make the copies identical, or let bertbatch ship the driver's copy (ship_model=True).")
        for rel in relative:
            file = root / rel
            if rel not in expected:
                raise ModelError(f"{where} would load {rel}, which the driver did not pick for this job "
                                 f"(it hashed {sorted(expected)}). {fix} Or name the graph (--graph).")
            if not file.exists():
                raise ModelError(f"{where} has no {file}. {fix}")
            actual = sha256_file(file)
            if actual != expected[rel]:
                raise ModelError(
                    f"Model file {rel} differs between the driver and {where}: sha256 {actual[:12]}... here, "
                    f"{expected[rel][:12]}... on the driver ({self.path}). {fix}"
                )


@dataclass(frozen=True)
class _Job:
    model: ModelShipment
    config: ScoreConfig  # as the executors run it (graph relative to the model directory)
    keep: tuple


def _score(df, model_dir, config: ScoreConfig, ship_model: bool | None, tally: bool = False):
    """The lazy scored DataFrame, and the accumulator of rows per provider/graph when `tally`."""
    _check_columns(df, config)
    keep = list(config.keep) if config.keep is not None else list(df.columns)
    model = ModelDir.open(Path(model_dir).resolve())
    spark = df.sparkSession
    ship = not spark.sparkContext.master.startswith("local") if ship_model is None else ship_model
    graph = _executor_graph(model.path, config.graph, ship)
    config = replace(config, graph=graph, keep=tuple(keep))
    hashes = _hash_files(model.path, [*GRAPH_HASHED, *_candidate_graphs(model, config)])
    shipped = _ship(spark, model, hashes) if ship else None
    job = _Job(ModelShipment(str(model.path), shipped, hashes), config, tuple(keep))
    kept = pa.schema([pa.field(name, pa.null()) for name in keep])  # names only: Spark keeps its own types
    results = pa.schema(list(output_schema(kept, model.labels, model.multi_label, config))[len(keep):])
    schema = _spark_schema(df.schema, keep, results)
    accumulator = spark.sparkContext.accumulator({}, _Tally()) if tally else None
    selected = df.select(*[_column(c) for c in config.read_columns(keep)])
    return selected.mapInArrow(partial(_label_partition, job=job, tally=accumulator), schema), accumulator


def _spark_schema(input_schema, keep: list[str], results: pa.Schema):
    """Kept input fields as Spark has them, then the result fields (output_schema refused name clashes)."""
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StructType

    return StructType([input_schema[name] for name in keep] + list(from_arrow_schema(results).fields))


def _check_columns(df, config: ScoreConfig) -> None:
    from pyspark.sql.types import StringType

    types = {f.name: f.dataType for f in df.schema.fields}
    for column in config.text_columns:
        if column not in types:
            raise InputError(
                f"Column '{column}' not found in the DataFrame; columns are {df.columns}. "
                "Use text_col='NAME' (--text-column NAME)."
            )
        if not isinstance(types[column], StringType):
            raise InputError(
                f"Column '{column}' has type {types[column].simpleString()}; text must be strings. "
                f"Cast it first: df.withColumn('{column}', df['{column}'].cast('string'))."
            )
    missing = [c for c in config.keep or () if c not in types]
    if missing:
        raise InputError(f"keep columns {missing} not found in the DataFrame; columns are {df.columns}.")


def _column(name: str):
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _executor_graph(root: Path, graph: str | None, ship: bool) -> str | None:
    """An explicit .onnx path as executors must see it: relative to the model directory when inside it."""
    if not graph or not graph.endswith(".onnx") or not Path(graph).is_absolute():
        return graph
    path = Path(graph).resolve()
    if root in path.parents:
        return str(path.relative_to(root))
    if ship:
        raise ModelError(f"Graph {graph} lies outside the model directory {root}; move it inside to ship it.")
    return str(path)


def _candidate_graphs(model: ModelDir, config: ScoreConfig) -> list[str]:
    """The graphs an executor may pick: for `auto`, the CPU choice and the CUDA one (a task may hold a GPU)."""
    providers = {"cpu": [CPU], "cuda": [CUDA], "auto": [CPU, CUDA]}[config.provider]
    graphs = {model.graph_path(config.graph, p) for p in providers}
    if None in graphs:
        raise ModelError(
            f"Spark scoring runs ONNX graphs and {model.path} has none{' (--graph torch)' if config.graph else ''}. "
            f"Run `bertbatch export {model.path}` first."
        )
    return sorted(str(g.relative_to(model.path)) if model.path in g.parents else str(g) for g in graphs)


_DRIVER_HASHES: dict[tuple, str] = {}


def _hash_files(root: Path, relative: list[str]) -> tuple:
    """sha256 of each file (cached on path, size and mtime: a model is hashed once per driver process)."""
    out = []
    for rel in dict.fromkeys(relative):
        file = root / rel
        if not file.exists():
            raise ModelError(f"{file} is missing; {root} is not a complete model directory.")
        stat = file.stat()
        key = (str(file), stat.st_size, stat.st_mtime_ns)
        if key not in _DRIVER_HASHES:
            _DRIVER_HASHES[key] = sha256_file(file)
        out.append((rel, _DRIVER_HASHES[key]))
    return tuple(out)


_STAGED: dict[str, Path] = {}  # SparkFiles name -> staged directory, for this driver process
_ADDED: set[tuple[str, str]] = set()  # (application id, SparkFiles name) already added


def _ship(spark, model: ModelDir, hashes: tuple) -> str:
    """Stage a slim copy of the model directory (configs, tokenizer, the candidate graphs) and addFile it.

    The name carries a digest of the hashes, so two models, or two versions of one, never collide on executors.
    """
    digest = hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:16]
    name = f"bertbatch-{re.sub(r'[^A-Za-z0-9_.-]', '_', model.name)}-{digest}"
    if name not in _STAGED:
        _STAGED[name] = _stage(model.path, [rel for rel, _ in hashes], name)
    context = spark.sparkContext
    if (context.applicationId, name) not in _ADDED:
        context.addFile(str(_STAGED[name]), recursive=True)
        _ADDED.add((context.applicationId, name))
        log.info("Shipping %s to executors as %s", model.path, name)
    return name


def _stage(root: Path, hashed: list[str], name: str) -> Path:
    staging = Path(tempfile.mkdtemp(prefix="bertbatch-spark-"))
    atexit.register(shutil.rmtree, staging, True)
    target = staging / name
    wanted = [p for p in root.iterdir() if p.is_file() and p.name.endswith(SHIPPED_SUFFIXES)]
    onnx = root / "onnx"
    if onnx.is_dir():  # configs and external-data files beside the graphs, but only the graphs that may run
        wanted += [p for p in onnx.iterdir() if p.is_file() and not p.name.endswith(".onnx")]
    wanted += [root / rel for rel in hashed]
    for source in dict.fromkeys(wanted):
        destination = target / source.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            destination.hardlink_to(source)  # no copy on the same file system
        except OSError:
            shutil.copy2(source, destination)
    return target


def _session(master: str):
    """The active SparkSession (not stopped later), or a new one on `master` (the caller stops it)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        if master != active.sparkContext.master:
            log.info("Using the active Spark session on %s (not %s)", active.sparkContext.master, master)
        return active, False
    builder = SparkSession.builder.master(master).appName("bertbatch score")
    if master.startswith("local"):
        # Local workers run on this machine: make them this interpreter (the one that has bertbatch installed).
        # pyspark's SparkContext reads only PYSPARK_PYTHON for that (the conf is honoured by spark-submit alone);
        # a value the user set wins.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    return builder.getOrCreate(), True


def _read(spark, files: list[Path], columns: list[str]):
    """One DataFrame over the input files, grouped by format; CSV columns are non-null strings as written."""
    from pyspark.sql import functions as F

    groups: dict[tuple, list[str]] = {}
    for path in files:
        kind = file_format(path)
        groups.setdefault((kind, csv_delimiter(path) if kind == "csv" else None), []).append(str(path))
    frames = []
    for (kind, delimiter), paths in groups.items():
        if kind == "parquet":
            frame = spark.read.parquet(*paths).select(*[_column(c) for c in columns])
        else:
            frame = spark.read.options(**CSV_OPTIONS, sep=delimiter).csv(paths)
            frame = frame.select(*[F.coalesce(_column(c), F.lit("")).alias(c) for c in columns])
        frames.append(frame)
    return reduce(lambda a, b: a.unionByName(b), frames)


def _check_engine_options(config: ScoreConfig, output) -> None:
    if str(output) == "-":
        raise InputError("The Spark engine writes a Parquet directory; it cannot stream to stdout. Give -o a path.")
    fmt = config.output_format or output_format(str(output), None)
    if fmt != "parquet":
        raise InputError(f"The Spark engine writes Parquet only; got {fmt}. Use a directory path or --engine local.")
    if config.resume:
        raise InputError("--resume is not available with --engine spark: Spark's commit protocol writes the whole "
                         "output or nothing, so re-run the job (with --overwrite).")
    if config.on_bad_rows == "reject":
        raise InputError("--on-bad-rows reject is not available with --engine spark (Spark reads CSV in FAILFAST "
                         "mode). Fix the rows or use --engine local.")


def _check_output(output, files: list[Path], overwrite: bool) -> None:
    text = str(output)
    if "://" in text and not text.startswith("file:"):
        return  # a remote file system: Spark's errorifexists mode decides
    path = Path(text.removeprefix("file://").removeprefix("file:"))
    refuse_input_overlap(path, files, directory=True)
    refuse_existing(path, overwrite)


def _translate(exc: Exception, output) -> Exception:
    """A Spark job failure as the bertbatch error behind it, when there is one; else the exception itself."""
    text = str(exc)
    ours = re.search(r"bertbatch\.errors\.(InputError|ModelError|MissingDependency): ([^\n]+)", text)
    if ours:
        return (InputError if ours.group(1) == "InputError" else ModelError)(ours.group(2).strip())
    if "No module named 'bertbatch'" in text:
        return ModelError(
            "Spark's Python workers cannot import bertbatch. Install it on every node (pip install 'bertbatch[cpu]'), "
            "or point spark.pyspark.python at an interpreter that has it."
        )
    if "MALFORMED" in text:
        file = re.search(r"while reading file (\S+?)\.?\s", text)
        record = re.search(r"Malformed CSV record: (.*?)\s*(?:SQLSTATE|$)", text, re.MULTILINE)
        return InputError(
            f"{file.group(1) if file else 'A CSV input'}: a row does not have the header's columns"
            f"{f' ({record.group(1)[:200]!r})' if record else ''}. Fix the row, or use --engine local with "
            "--on-bad-rows reject to set such rows aside."
        )
    if "PATH_ALREADY_EXISTS" in text:
        return InputError(f"Output {output} exists. Pass --overwrite to replace it.")
    return exc


class _Tally:
    """Accumulator of rows per '<provider> <graph> threads=<n>' across executors (duck-typed AccumulatorParam)."""

    def zero(self, value):
        return {}

    def addInPlace(self, a, b):
        for key, rows in b.items():
            a[key] = a.get(key, 0) + rows
        return a


# --------------------------------------------------------------------------------------------- executor side
_SCORERS: dict[tuple, Scorer] = {}  # per Python worker process; Spark reuses workers across tasks


def _label_partition(batches, job: _Job, tally=None):
    """mapInArrow body: label each Arrow batch in windows of `window_rows`, same rows, same order."""
    scorer, rows, window, keep = None, 0, job.config.window_rows, list(job.keep)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        scorer = scorer or _worker_scorer(job)
        for start in range(0, batch.num_rows, window):
            yield scorer.label_batch(batch.slice(start, window), keep)
        rows += batch.num_rows
    if tally is not None and scorer is not None:
        graph = scorer.model.graph_key(Path(scorer.graph))
        tally.add({f"{scorer.runner.provider} {graph} threads={scorer.runner.threads}": rows})


def _worker_scorer(job: _Job) -> Scorer:
    """This worker's Scorer for the job, built (and its files checked against the driver's) on first use."""
    from pyspark import TaskContext

    context = TaskContext.get()
    provider, device = task_provider(job.config.provider, context)
    threads = job.config.threads or task_cpus(context)
    config = replace(job.config, provider="cuda" if provider == CUDA else "cpu", threads=threads)
    root = job.model.root()
    key = (str(root), job.model.hashes, device, json.dumps(asdict(config), sort_keys=True, default=str))
    if key not in _SCORERS:
        graph = ModelDir.open(root).graph_path(config.graph, provider)
        job.model.verify(root, [*GRAPH_HASHED, str(graph.relative_to(root)) if root in graph.parents else str(graph)])
        while len(_SCORERS) >= _WORKER_CACHE_SIZE:
            _SCORERS.pop(next(iter(_SCORERS)))
        _SCORERS[key] = Scorer(root, config, runner=_device_runner(graph, threads, device))
        log.info("Loaded %s on %s (%s, %d threads)", graph, socket.gethostname(), provider, threads)
    return _SCORERS[key]


def task_provider(requested: str, context) -> tuple[str, int | None]:
    """(provider, GPU index) for a Spark task: CUDA only when the task holds a GPU, unless `cuda` is forced."""
    gpus = context.resources().get("gpu") if context is not None else None
    addresses = list(gpus.addresses) if gpus is not None else []
    device = int(addresses[0]) if addresses and str(addresses[0]).isdigit() else (0 if addresses else None)
    if requested == "cpu":
        return CPU, None
    if requested == "cuda":
        return resolve_provider("cuda"), device or 0
    if device is not None and CUDA in available_providers():
        return CUDA, device
    return CPU, None


def task_cpus(context) -> int:
    """spark.task.cpus of the running task (1 outside a task)."""
    try:
        return max(1, int(context.cpus())) if context is not None else 1
    except (AttributeError, TypeError, ValueError):  # pyspark < 3.3 has no TaskContext.cpus()
        return 1


def _device_runner(graph: Path, threads: int, device: int | None):
    """A runner on GPU `device` when it is not 0 (the Scorer builds the device-0 and CPU runners itself)."""
    if not device:
        return None
    from .runtime import OrtRunner

    return OrtRunner(graph, CUDA, threads, device_id=device)
