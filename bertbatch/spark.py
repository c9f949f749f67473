"""Distributed scoring: the same `Scorer.label_batch` inside Spark's `mapInArrow`, for data that outgrows a machine.

Arrow record batches go from Spark straight into the scorer and back, without pandas. Each Python worker loads
the model once (a module-level cache) and picks its provider from what Spark gave the task: CUDA when the task
holds a `gpu` resource and onnxruntime offers CUDA, else CPU with `spark.task.cpus` intra-op threads.

Model distribution: by default (any master but local) the driver zips a slim copy of the model directory
(configs, tokenizer, the graphs that may run) and adds it with `SparkContext.addArchive`; each executor JVM
fetches and unpacks it once into its SparkFiles directory, on standalone, YARN and Kubernetes alike (an archive is
one file: `addFile` of a directory is refused outside local mode). With `ship_model=False` executors read the
driver's path (a shared file system). Either way each executor checks the sha256 of the files it loads.

Before any row is scored, a probe job asks the executors (one task per slot) which Python they run, whether it
imports bertbatch, and the sha256 of their model files. The probe never raises on an executor, so a wrong
Python or a model that differs from the driver's becomes one ModelError on the driver: a deterministic failure
that Spark does not retry (it retries every failed task up to spark.task.maxFailures times).
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
import types
import zipfile
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
from .tune import choose_settings

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
          ship_model: bool | None = None, check_executors: bool = True, **overrides):
    """Label a Spark DataFrame: the kept columns (`config.keep`, default all), then the result columns.

    Same output columns as `bertbatch score`: label, score, prob_<label>/top_k/logits on request, truncated,
    error. Null or empty text gives a null label and an error reason, never a dropped row. Lazy: nothing is
    scored until an action (write, count). `text_col` defaults to `config.text_column` ('text').
    `ship_model`: None ships a zip of the model (addArchive) unless the master is local; True always ships;
    False reads `model_dir` at the same path on every executor (a shared file system).
    `check_executors`: run the probe job now (see check_executors_can_score), so that a worker Python without
    bertbatch or a model that differs fails here, once, instead of in every task attempt of your action.
    The session is yours: its workers' Python is PYSPARK_PYTHON as it was when the session started.
    """
    _require_spark()
    config = replace(config or ScoreConfig(), **overrides)
    if text_col is not None:
        config = replace(config, text_column=text_col)
    return _score(df, model_dir, config, ship_model, check_executors=check_executors)[0]


def score_files(inputs, output: str | Path, model_dir: str | Path, config: ScoreConfig | None = None,
                master: str = "local[*]", *, ship_model: bool | None = None, repartition: bool = True,
                partitions: int | None = None, spark_conf: dict | None = None, **overrides) -> dict:
    """Score CSV/Parquet input(s) (file, list, directory, glob) with Spark into a Parquet directory; the summary.

    Uses the active SparkSession if there is one, else starts one on `master` with `spark_conf` (and stops it
    at the end); its workers run `spark.pyspark.python` from `spark_conf`, else $PYSPARK_PYTHON, else this
    interpreter. With `repartition`, input with fewer partitions than `partitions` (default: Spark's default
    parallelism; one multi-line CSV file is one partition) is spread over that many. Output row order is
    Spark's, not the input's: keep an ID column. Written with Spark's commit protocol (`_SUCCESS` once complete).
    """
    _require_spark()
    config = replace(config or ScoreConfig(), **overrides)
    _check_engine_options(config, output)
    files = expand_inputs(inputs, config.partition_type_map)
    keep, _ = check_inputs(files, config)
    _check_output(output, files, config.overwrite)
    config = replace(config, keep=tuple(keep))
    started = time.time()
    spark, created = _session(master, spark_conf)
    session_seconds = time.time() - started
    try:
        counts = _write_scored(spark, files, str(output), model_dir, config, ship_model,
                               partitions if repartition else None, repartition)
    finally:
        if created:
            spark.stop()
    seconds = time.time() - started
    job_seconds = seconds - session_seconds
    main = max(counts["providers"], key=counts["providers"].get) if counts["providers"] else None
    provider, graph, threads = main.split() if main else (None, None, None)  # the one that scored the most rows
    summary = make_summary(
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
        provider=provider,
        graph=graph,
        threads=int(threads.removeprefix("threads=")) if threads else None,
        output=str(output),
        master=counts["master"],
        partitions=counts["partitions"],  # as scored: input_partitions, or more when repartitioned
        providers=counts["providers"],  # "<provider> <graph> threads=<n>" -> rows, as run on the executors
    )
    return {  # the shared shape, then what only a cluster run has
        **summary,
        "model_shipped": counts["shipped"],
        "input_partitions": counts["input_partitions"],
        "repartitioned": counts["partitions"] != counts["input_partitions"],
        "executors_checked": counts["executors_checked"],  # distinct Python workers the probe reached
    }


def _write_scored(spark, files, output: str, model_dir, config: ScoreConfig, ship_model, partitions,
                  repartition: bool) -> dict:
    """Read, score and write with Spark's commit protocol; counts read back from the written Parquet."""
    from pyspark.sql import functions as F

    df = _read(spark, files, config.read_columns(list(config.keep)))
    before = df.rdd.getNumPartitions()
    spread = partitions or spark.sparkContext.defaultParallelism
    if repartition and before < spread:  # one multi-line CSV file is one partition: spread its rows over the slots
        df = df.repartition(spread)
    out, tally, job, facts = _score(df, model_dir, config, ship_model, tally=True)
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
        "input_partitions": before,
        "partitions": out.rdd.getNumPartitions(),
        "shipped": job.model.shipped is not None,
        "executors_checked": len({(f["host"], f["pid"]) for f in facts}),
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

    def fix(self) -> str:
        """What to do about a model file that differs between the driver and an executor."""
        if self.shipped:
            return ("The executor's unpacked copy differs from the archive the driver shipped: it was changed, or the "
                    "driver's files changed while the job started. Run the job again (a new application unpacks afresh).")
        return ("Make the copies identical, or let bertbatch ship the driver's copy (ship_model=True, "
                "bertbatch score --ship-model).")

    def mismatch(self, rel: str, actual: str | None, root: Path | str, where: str) -> str | None:
        """The one-line message for file `rel` hashing to `actual` (None: missing) at `root`, or None when equal."""
        expected = dict(self.hashes)
        if rel not in expected:
            return (f"{where} would load {rel}, which the driver did not pick for this job (it hashed "
                    f"{sorted(expected)}). {self.fix()} Or name the graph (--graph).")
        if actual is None:
            return f"{where} has no {Path(root) / rel}. {self.fix()}"
        if actual != expected[rel]:
            return (f"Model file {rel} differs between the driver and {where}: sha256 {actual[:12]}... there "
                    f"({root}), {expected[rel][:12]}... on the driver ({self.path}). {self.fix()}")
        return None

    def verify(self, root: Path, relative: list[str]) -> None:
        """Raise ModelError when a file here is missing or differs from the driver's."""
        where = f"executor {socket.gethostname()}"
        for rel in relative:
            file = root / rel
            problem = self.mismatch(rel, sha256_file(file) if file.exists() else None, root, where)
            if problem:
                raise ModelError(problem)


@dataclass(frozen=True)
class _Job:
    model: ModelShipment
    config: ScoreConfig  # as the executors run it (graph relative to the model directory)
    keep: tuple
    # the graph every CPU task runs when none was named: chosen once on the driver (its tune record or the
    # safe default), so executors on other machines never pick another graph and relabel rows
    cpu_graph: str | None = None


def _score(df, model_dir, config: ScoreConfig, ship_model: bool | None, tally: bool = False,
           check_executors: bool = True):
    """The lazy scored DataFrame, and the accumulator of rows per provider/graph when `tally`."""
    _check_columns(df, config)
    keep = list(config.keep) if config.keep is not None else list(df.columns)
    model = ModelDir.open(Path(model_dir).resolve())
    spark = df.sparkSession
    ship = not spark.sparkContext.master.startswith("local") if ship_model is None else ship_model
    graph = _executor_graph(model.path, config.graph, ship)
    config = replace(config, graph=graph, keep=tuple(keep))
    cpu_graph = graph or choose_settings(model, config, CPU).graph
    hashes = _hash_files(model.path, [*GRAPH_HASHED, *_candidate_graphs(model, config, cpu_graph)])
    shipped = _ship(spark, model, hashes) if ship else None
    job = _Job(ModelShipment(str(model.path), shipped, hashes), config, tuple(keep), cpu_graph)
    kept = pa.schema([pa.field(name, pa.null()) for name in keep])  # names only: Spark keeps its own types
    width = _embedding_width(model, hashes) if config.embeddings else None
    results = pa.schema(list(output_schema(kept, model.labels, model.multi_label, config, width))[len(keep):])
    facts = check_executors_can_score(spark, job.model) if check_executors else []
    schema = _spark_schema(df.schema, keep, results)
    accumulator = spark.sparkContext.accumulator({}, _Tally()) if tally else None
    selected = df.select(*[_column(c) for c in config.read_columns(keep)])
    return selected.mapInArrow(partial(_label_partition, job=job, tally=accumulator), schema), accumulator, job, facts


def check_executors_can_score(spark, model: ModelShipment) -> list[dict]:
    """Probe the executors (one task per slot) before any row is scored; the facts each reported.

    Raises one ModelError on the driver when an executor's Python cannot import bertbatch or its model files
    differ from the driver's. The probe returns facts and never raises on the executor, so these deterministic
    failures are never retried by Spark; the executors' own check at load time stays as the last line.
    """
    context = spark.sparkContext
    slots = max(1, context.defaultParallelism)
    probe = partial(_by_value(_probe_executor), shipped=model.shipped, path=model.path,
                    relative=[rel for rel, _ in model.hashes])
    context.setJobDescription("bertbatch: check that executors can score")
    try:
        facts = context.parallelize(range(slots), slots).mapPartitions(probe).collect()
    except Exception as exc:  # the Python worker did not start at all (no such interpreter, no pyspark)
        raise _translate(exc, None) from exc
    finally:
        context.setJobDescription(None)
    for fact in facts:
        where = f"the executor on {fact['host']}"
        if fact["import_error"]:
            raise ModelError(
                f"Spark's Python workers on {fact['host']} run {fact['python']} (Python {fact['version']}), which "
                f"cannot import bertbatch ({fact['import_error']}). {PYTHON_HINT}"
            )
        for rel, actual in fact["hashes"].items():
            problem = model.mismatch(rel, actual, fact["root"], where)
            if problem:
                raise ModelError(problem)
    log.info("Executors checked: %s", sorted({(f["host"], f["python"]) for f in facts}))
    return facts


PYTHON_HINT = (
    "Install bertbatch into that Python on every node, or point the workers at a Python that has it: "
    "bertbatch score --spark-conf spark.pyspark.python=PATH; spark-submit --conf spark.pyspark.python=PATH "
    "(or a packed environment: --archives env.tar.gz#env --conf spark.pyspark.python=./env/bin/python); "
    "a SparkSession you build: set PYSPARK_PYTHON before it starts."
)


def _probe_executor(partition, shipped: str | None, path: str, relative: list[str]):
    """Runs on an executor: which Python, can it import bertbatch, the sha256 of each model file (None: missing).

    Shipped by value (see _by_value), so it runs even where bertbatch cannot be imported, and it never raises.
    """
    import hashlib
    import importlib
    import os
    import platform
    import socket
    import sys

    for _ in partition:
        pass
    fact = {"host": socket.gethostname(), "python": sys.executable, "version": platform.python_version(),
            "pid": os.getpid(), "import_error": None, "hashes": {}, "root": path}
    for module in ("bertbatch.score", "onnxruntime"):  # what scoring imports (numpy, pyarrow, tokenizers with it)
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a native library that fails to load
            fact["import_error"] = f"{type(exc).__name__}: {exc}"
            break
    if shipped:
        from pyspark import SparkFiles

        fact["root"] = SparkFiles.get(shipped)
    for rel in relative:
        digest = hashlib.sha256()
        try:
            with open(os.path.join(fact["root"], rel), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            fact["hashes"][rel] = digest.hexdigest()
        except OSError:
            fact["hashes"][rel] = None
    yield fact


def _by_value(fn):
    """A copy of `fn` that cloudpickle ships by value (as if defined in __main__), not as `bertbatch.spark.fn`."""
    import builtins

    clone = types.FunctionType(fn.__code__, {"__builtins__": builtins}, fn.__name__, fn.__defaults__)
    clone.__module__, clone.__qualname__ = "__main__", fn.__name__
    return clone


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


def _candidate_graphs(model: ModelDir, config: ScoreConfig, cpu_graph: str | None = None) -> list[str]:
    """The graphs an executor may pick: for `auto`, the CPU choice and the CUDA one (a task may hold a GPU)."""
    providers = {"cpu": [CPU], "cuda": [CUDA], "auto": [CPU, CUDA]}[config.provider]
    graphs = {model.graph_path(cpu_graph if p == CPU and cpu_graph else config.graph, p) for p in providers}
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


_STAGED: dict[str, Path] = {}  # archive name -> staged zip, for this driver process
_ADDED: set[tuple[str, str]] = set()  # (application id, archive name) already added


def _ship(spark, model: ModelDir, hashes: tuple) -> str:
    """Zip a slim copy of the model directory (configs, tokenizer, the candidate graphs) and addArchive it.

    One archive file works on every cluster manager (standalone, YARN, Kubernetes; addFile of a directory is
    refused outside local mode); each executor unpacks it once into SparkFiles/<name>. The name carries a digest
    of the hashes: two models, or two versions of one, never collide, and Spark never has to overwrite an added
    archive (which it refuses to do).
    """
    digest = hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:16]
    name = f"bertbatch-{re.sub(r'[^A-Za-z0-9_.-]', '_', model.name)}-{digest}"
    if name not in _STAGED:
        _STAGED[name] = _stage(model.path, [rel for rel, _ in hashes], name)
    context = spark.sparkContext
    if (context.applicationId, name) not in _ADDED:
        context.addArchive(f"{_STAGED[name]}#{name}")
        _ADDED.add((context.applicationId, name))
        log.info("Shipping %s to executors as %s", model.path, _STAGED[name].name)
    return name


def shipped_files(root: Path, hashed: list[str]) -> list[Path]:
    """The files a shipped copy holds: top-level configs and tokenizer, onnx/ side files, the hashed graphs."""
    wanted = [p for p in root.iterdir() if p.is_file() and p.name.endswith(SHIPPED_SUFFIXES)]
    onnx = root / "onnx"
    if onnx.is_dir():  # configs and external-data files beside the graphs, but only the graphs that may run
        wanted += [p for p in onnx.iterdir() if p.is_file() and not p.name.endswith(".onnx")]
    return list(dict.fromkeys(wanted + [root / rel for rel in hashed]))


def _stage(root: Path, hashed: list[str], name: str) -> Path:
    """The zip of the slim copy, in a temporary directory removed when this process exits."""
    staging = Path(tempfile.mkdtemp(prefix="bertbatch-spark-"))
    atexit.register(shutil.rmtree, staging, True)
    target = staging / f"{name}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:  # graphs barely compress; stored is fast
        for source in shipped_files(root, hashed):
            archive.write(source, source.relative_to(root).as_posix())
    return target


def _session(master: str, conf: dict | None = None):
    """The active SparkSession (not stopped later), or a new one on `master` (the caller stops it).

    A new session's Python workers run `spark.pyspark.python` from `conf`, else $PYSPARK_PYTHON, else this
    interpreter (the one that imports bertbatch; right for local mode and for nodes that share this install).
    pyspark reads the workers' Python from $PYSPARK_PYTHON when the SparkContext starts (the conf is honoured by
    spark-submit alone), so the variable is set for that moment and restored after.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        if master != active.sparkContext.master:
            log.info("Using the active Spark session on %s (not %s)", active.sparkContext.master, master)
        return active, False
    conf = dict(conf or {})
    python = conf.setdefault("spark.pyspark.python", os.environ.get("PYSPARK_PYTHON") or sys.executable)
    builder = SparkSession.builder.master(master).appName("bertbatch score")
    for key, value in conf.items():
        builder = builder.config(key, value)
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = python
    try:
        return builder.getOrCreate(), True
    finally:
        if previous is None:
            os.environ.pop("PYSPARK_PYTHON", None)
        else:
            os.environ["PYSPARK_PYTHON"] = previous


def _read(spark, files: list, columns: list[str]):
    """One DataFrame over the input files, grouped by format and Hive partition; CSV columns are non-null
    strings as written; partition values (typed as `source` types them) are added as literal columns."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type

    groups: dict[tuple, list[str]] = {}
    for path in files:
        if getattr(path, "remote", None) is not None:
            raise InputError(f"{path}: the Spark engine reads paths its executors can open (a shared file system); "
                             "read store data into a DataFrame yourself and call bertbatch.spark.score, or use "
                             "--engine local.")
        kind = file_format(path)
        values = tuple(path.partition_values().items()) if hasattr(path, "partition_values") else ()
        groups.setdefault((kind, csv_delimiter(path) if kind == "csv" else None, values), []).append(str(path))
    frames = []
    for (kind, delimiter, values), paths in groups.items():
        partition_keys = [key for key, _ in values]
        file_columns = [c for c in columns if c not in partition_keys]
        if kind == "parquet":
            frame = spark.read.parquet(*paths).select(*[_column(c) for c in file_columns])
        else:
            frame = spark.read.options(**CSV_OPTIONS, sep=delimiter).csv(paths)
            frame = frame.select(*[F.coalesce(_column(c), F.lit("")).alias(c) for c in file_columns])
        for key, value in values:
            frame = frame.withColumn(key, F.lit(value.as_py()).cast(from_arrow_type(value.type)))
        frames.append(frame.select(*[_column(c) for c in columns]))
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
    if re.search(r"Cannot run program \"[^\"]*\".*No such file", text):
        python = re.search(r'Cannot run program "([^"]*)"', text).group(1)
        return ModelError(f"Spark cannot start the workers' Python {python}: no such file on an executor. {PYTHON_HINT}")
    if "No module named 'bertbatch'" in text:
        return ModelError(f"Spark's Python workers cannot import bertbatch. {PYTHON_HINT}")
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
            yield _spark_types(scorer.label_batch(batch.slice(start, window), keep))
        rows += batch.num_rows
    if tally is not None and scorer is not None:
        graph = scorer.model.graph_key(Path(scorer.graph))
        tally.add({f"{scorer.runner.provider} {graph} threads={scorer.runner.threads}": rows})


def _embedding_width(model: ModelDir, hashes) -> int:
    """--embeddings on Spark: the width, after refusing on the driver graphs exported without the output."""
    from .embedding import embedding_size, graph_has_output

    width = embedding_size(model.config)
    for relative, _ in hashes:
        path = Path(relative) if Path(relative).is_absolute() else model.path / relative
        if path.suffix == ".onnx" and not graph_has_output(path):
            raise ModelError(f"{path} has no embedding output (exported before bertbatch added it); re-export with "
                             f"`bertbatch export {model.path}`, or score without --embeddings.")
    return width


def _spark_types(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Spark has no fixed-size array type: its Arrow conversion maps FixedSizeList to ArrayType, so the
    embedding travels as a plain list (every row still holds exactly hidden-size values, or null)."""
    if "embedding" not in batch.schema.names or not pa.types.is_fixed_size_list(batch.schema.field("embedding").type):
        return batch
    index = batch.schema.get_field_index("embedding")
    column = batch.column(index)
    return batch.set_column(index, pa.field("embedding", pa.list_(column.type.value_type)),
                            column.cast(pa.list_(column.type.value_type)))


def _worker_scorer(job: _Job) -> Scorer:
    """This worker's Scorer for the job, built (and its files checked against the driver's) on first use."""
    from pyspark import TaskContext

    context = TaskContext.get()
    provider, device = task_provider(job.config.provider, context)
    threads = job.config.threads or task_cpus(context)
    graph = job.config.graph or (job.cpu_graph if provider == CPU else None)
    config = replace(job.config, provider="cuda" if provider == CUDA else "cpu", threads=threads, graph=graph)
    root = job.model.root()
    key = (str(root), job.model.hashes, device, json.dumps(asdict(config), sort_keys=True, default=str))
    if key not in _SCORERS:
        cap_tokenizer_threads(threads)
        graph = ModelDir.open(root).graph_path(config.graph, provider)
        job.model.verify(root, [*GRAPH_HASHED, str(graph.relative_to(root)) if root in graph.parents else str(graph)])
        while len(_SCORERS) >= _WORKER_CACHE_SIZE:
            _SCORERS.pop(next(iter(_SCORERS)))
        _SCORERS[key] = Scorer(root, config, runner=_device_runner(graph, threads, device))
        log.info("Loaded %s on %s (%s, %d threads)", graph, socket.gethostname(), provider, threads)
    return _SCORERS[key]


def cap_tokenizer_threads(threads: int) -> None:
    """Size the tokenizer's thread pool to the task's CPUs, as ONNX Runtime's is, in this Python worker.

    tokenizers' encode_batch runs on rayon's global pool, which rayon sizes once, when first used, from
    RAYON_NUM_THREADS (else every core of the node: one pool per Python worker, N workers on an N-core executor
    would each start N threads). A value set for the executors (spark.executorEnv.RAYON_NUM_THREADS) wins.
    """
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, threads)))


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
