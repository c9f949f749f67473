"""Distributed scoring on Ray: `score(dataset, model_dir)` maps a Ray Dataset through an actor pool of Scorers;
`score_files` (`bertbatch score --engine ray`) runs a whole job of the plan (plan.py) on a cluster.

A mover, like the local pipeline: read tasks read the plan's files with bertbatch's own readers and windows
(same CSV rules, same part boundaries, resumed rows skipped), an actor pool of Scorers labels the Arrow
batches (`batch_format="pyarrow"`, never pandas), and the driver streams the labeled batches, in input order,
into the plan's Writer: every part committed once through bertbatch's job protocol (manifest, `_SUCCESS`,
`--resume`). Ray's own `write_parquet` is not used: its write tasks write each file in place under a name
derived from the task index, with no temporary name, manifest or resume; a task retried after a lost node
writes its file again (ray/data/datasource/file_datasink.py).

The model travels in the object store (`ray.put` of the slim copy: configs, tokenizer, the graphs that may
run); each node unpacks it once into a directory keyed by its content, and every file is hash-checked before
a Scorer loads it. Before any row is scored a probe task on every node reports its Python, whether it imports
bertbatch, and the sha256 of its model copy, so a deployment that cannot score is one ModelError on the driver.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from .config import ScoreConfig
from .errors import BertbatchError, InputError, ModelError, require
from .modeldir import ModelDir
from .runtime import CPU, CUDA, available_providers
from .shipping import GRAPH_HASHED, ModelShipment, by_value, candidate_graphs, executor_graph, hash_files, shipped_files

try:  # read tasks come from a Datasource subclass; without Ray the module still imports (and says which extra)
    from ray.data import Datasource as _Datasource
except ImportError:  # pragma: no cover - exercised by the missing-extra test
    _Datasource = object

log = logging.getLogger(__name__)

# Columns the read tasks add and the driver removes: which part a row belongs to, and the token counts of
# its window (on the window's first row) for the summary.
FILE_TAG, CHUNK_TAG, REAL_TAG, PADDED_TAG = "__bertbatch_file", "__bertbatch_chunk", "__bertbatch_real", "__bertbatch_padded"
TAGS = (FILE_TAG, CHUNK_TAG, REAL_TAG, PADDED_TAG)
PROBE_SECONDS = 180  # a node whose probe has not answered by then (no free worker, a hung Python) fails the job
SHIPPED_FIX = ("Remove that directory on the node (bertbatch unpacks the model there again on the next job), "
               "or run with --no-ship-model on a shared file system.")
PYTHON_HINT = (
    "Install bertbatch (with its 'ray' extra) into the Python that runs Ray on every node, or start the nodes "
    "with one that has it (`/path/to/venv/bin/ray start ...`); with `ray job submit`, "
    "--runtime-env-json '{\"pip\": [\"bertbatch[ray]\"]}' installs it for the job."
)


# ------------------------------------------------------------------------------------------------ public API
def score(dataset, model_dir: str | Path, config: ScoreConfig | None = None, *, ship_model: bool = True,
          check_workers: bool = True, actors: int | None = None, **overrides):
    """Label a Ray Dataset: the kept columns (`config.keep`, default all), then the result columns.

    Lazy, like every Dataset transform; row order is Ray's unless `DataContext.execution_options.preserve_order`
    is set (keep an ID column). `ship_model=False`: workers read `model_dir` at the driver's path (a shared file
    system). `check_workers`: probe every node now (see check_nodes_can_score). `actors`: the pool's size,
    default one actor per `threads` CPUs of the cluster."""
    ray = _require_ray()
    config = replace(config or ScoreConfig(), **overrides)
    from .score import output_schema
    from .source import check_schema

    keep, kept = check_schema(_arrow_schema(dataset), config, "the Ray Dataset")
    model = ModelDir.open(Path(model_dir).resolve())
    output_schema(kept, model.labels, model.multi_label, config)  # refuses an input column named like an output one
    from .settings import choose_settings

    graph = executor_graph(model.path, config.graph, ship_model)
    config = replace(config, graph=graph, keep=tuple(keep))
    cpu_graph = graph or choose_settings(model, config, CPU).graph
    job = _ship(ray, model, config, tuple(keep), cpu_graph, ship_model)
    if check_workers:
        check_nodes_can_score(ray, job)
    return _map(ray, dataset, job, actors)


def score_files(inputs, output: str | Path, model_dir: str | Path, config: ScoreConfig | None = None,
                address: str | None = None, *, ship_model: bool | None = None, actors: int | None = None,
                progress=None, **overrides) -> dict:
    """Score CSV/Parquet input(s) on a Ray cluster into a Parquet directory job; the summary.

    `address`: a cluster (HOST:PORT of its head, or `auto`), default $RAY_ADDRESS, else a local Ray started for
    this job (and stopped after). A Ray already initialized in this process is used as it is. Output rows are
    in input order, in the local engine's parts; `--resume` continues an interrupted job."""
    ray = _require_ray()
    from .plan import plan_job, run_plan

    config = replace(config or ScoreConfig(), **overrides)
    _check_options(output, config)
    address = address or os.environ.get("RAY_ADDRESS") or None
    state: dict = {"created": False}

    def prepare(scorer) -> None:  # after the inputs and model are checked, before the output is claimed
        started = time.time()
        state["created"] = _connect(ray, address)
        state["session_seconds"] = time.time() - started
        state["job"] = _plan_shipment(ray, scorer, config, ship_model is not False)
        state["facts"] = check_nodes_can_score(ray, state["job"])

    try:
        plan = plan_job(inputs, output, model_dir, config, engine="ray", prepare=prepare)
        job = state["job"]
        summary = run_plan(plan, lambda plan, resumed, rejects, stop, threads: _move(ray, plan, job, resumed, actors),
                           progress)
        return {  # the shared shape, then what only a cluster run has
            **summary,
            "master": ray.get_runtime_context().gcs_address,
            "session_seconds": round(state["session_seconds"], 3),  # connecting to (or starting) Ray
            "partitions": len(plan.files),  # read tasks: one per input file
            "model_shipped": job.model.shipped is not None,
            "nodes_checked": len({f["node"] for f in state["facts"]}),
            "actors": _pool_size(ray, job, actors),
            "threads": job.threads,  # of each actor (the driver's own Scorer only decided the graph)
        }
    finally:
        if state["created"]:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------- driver side
def _require_ray():
    require("ray.data", "ray", "ray")
    import ray

    return ray


def _check_options(output, config: ScoreConfig) -> None:
    from .plan import refuse_non_parquet_output

    refuse_non_parquet_output(output, config, "Ray")
    if Path(str(output)).suffix:  # the local part writer would take a suffixed path for a single file
        raise InputError(f"The Ray engine writes a Parquet directory (an -o path without a file suffix); got "
                         f"{output}. Give a directory path or use --engine local.")
    if config.on_bad_rows == "reject":
        raise InputError("--on-bad-rows reject is not available with --engine ray (rows are read on the workers). "
                         "Fix the rows or use --engine local.")
    if config.partition_by:
        raise InputError("--partition-by is available with --engine local only.")


def _connect(ray, address: str | None) -> bool:
    """Connect to `address` / $RAY_ADDRESS, else start a local Ray on 127.0.0.1; whether we did (and so stop it)."""
    if ray.is_initialized():
        return False
    if address:
        _reachable(address)
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception when a node does not start
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if address:
            raise InputError(f"Cannot connect to the Ray cluster at {address}: {first[:300]} Check --address (or "
                             "RAY_ADDRESS): HOST:PORT of a head started with `ray start --head`.") from None
        raise ModelError(f"Ray could not start on this machine for the job: {first[:300]} Start a cluster "
                         "(`ray start --head`) and pass --address, or see its logs under /tmp/ray.") from None
    _quiet_data()
    return True


def _reachable(address: str) -> None:
    """Fail in seconds on a HOST:PORT nobody listens at (Ray itself retries for a minute and more)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise InputError(f"Cannot reach a Ray cluster at {address}: {exc.strerror or exc}. Check --address (or "
                         "RAY_ADDRESS): HOST:PORT of a head started with `ray start --head`; leave both out for a "
                         "local Ray.") from None


def _quiet_data() -> None:
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the CLI prints one summary; Ray's bars would interleave on stderr


def _arrow_schema(dataset) -> pa.Schema:
    schema = dataset.schema()
    if schema is None:
        raise InputError("The Ray Dataset has no schema (no rows); there is nothing to score.")
    return schema.base_schema if hasattr(schema, "base_schema") else schema


@dataclass(frozen=True)
class RayJob:
    """What every actor needs: where the model is, the driver's hashes, the config they run, the pool's shape."""

    model: ModelShipment
    config: ScoreConfig  # graph relative to the model directory
    keep: tuple
    cpu_graph: str | None  # the graph every CPU actor runs: the driver's choice, so no node relabels rows
    threads: int  # CPUs (intra-op threads) of one actor
    gpus: float  # GPUs of one actor (1 on CUDA, else 0)
    blob: object = None  # the ObjectRef of {relative path: bytes} when the model is shipped


def _plan_shipment(ray, scorer, config: ScoreConfig, ship: bool) -> RayJob:
    """The driver's Scorer decided graph and provider (the plan's metadata); actors run that graph."""
    model = scorer.model
    graph_file = scorer.graph_file
    if graph_file is None:
        raise ModelError(f"Distributed scoring runs ONNX graphs and {model.path} has none. "
                         f"Run `bertbatch export {model.path}` first.")
    chosen = model.graph_key(graph_file)  # int8, fp32...; or the .onnx path given
    cpu_graph = executor_graph(model.path, chosen, ship) if scorer.runner.provider == CPU else None
    graph = executor_graph(model.path, config.graph, ship)
    keep = tuple(config.keep) if config.keep is not None else None
    return _ship(ray, model, replace(config, graph=graph), keep, cpu_graph or graph, ship)


def _ship(ray, model: ModelDir, config: ScoreConfig, keep: tuple, cpu_graph, ship: bool) -> RayJob:
    hashes = hash_files(model.path, [*GRAPH_HASHED, *candidate_graphs(model, config, cpu_graph)])
    blob, shipped = None, None
    if ship:
        files = shipped_files(model.path, [rel for rel, _ in hashes])
        digest = hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:16]
        shipped = f"{model.name}-{digest}".replace("/", "_")
        blob = ray.put({f.relative_to(model.path).as_posix(): f.read_bytes() for f in files})
    gpus = 1.0 if config.provider == "cuda" or (config.provider == "auto" and ray.cluster_resources().get("GPU")) else 0.0
    threads = config.threads or 1
    shipment = ModelShipment(str(model.path), shipped, hashes, shipped_fix=SHIPPED_FIX, where="Ray worker")
    return RayJob(shipment, config, keep, cpu_graph, threads, gpus, blob)


def _pool_size(ray, job: RayJob, actors: int | None) -> int:
    """One actor per `threads` CPUs of the cluster (per GPU on CUDA), unless told."""
    if actors:
        return actors
    resources = ray.cluster_resources()
    if job.gpus:
        return max(1, int(resources.get("GPU", 1)))
    return max(1, int(resources.get("CPU", 1) // job.threads))


def check_nodes_can_score(ray, job: RayJob) -> list[dict]:
    """Probe every alive node before any row is scored; the facts each reported.

    One ModelError on the driver when a node's Python cannot import bertbatch or its model files differ from
    the driver's. The probe runs by value (it needs only the standard library and Ray), unpacks the shipped
    model on its node, and never raises, so these deterministic failures are not retried task by task."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(by_value(_probe_node))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    relative = [rel for rel, _ in job.model.hashes]
    refs = [probe.options(num_cpus=0, max_retries=0,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(job.blob, job.model.shipped, job.model.path, relative) for n in nodes]
    try:
        facts = ray.get(refs, timeout=PROBE_SECONDS)
    except ray.exceptions.GetTimeoutError:
        raise ModelError(f"Ray nodes did not answer bertbatch's probe within {PROBE_SECONDS} s: a node with no "
                         "free worker, or a Python that does not start. Check `ray status` and the nodes' logs.") from None
    except ray.exceptions.RayError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"Ray workers cannot run bertbatch's probe: {first[:300]}. {PYTHON_HINT}") from None
    for fact in facts:
        if fact["import_error"]:
            raise ModelError(
                f"Ray workers on {fact['host']} (node {fact['node'][:12]}) run {fact['python']} (Python "
                f"{fact['version']}), which cannot import bertbatch ({fact['import_error']}). {PYTHON_HINT}"
            )
        where = f"the Ray worker on {fact['host']} (node {fact['node'][:12]})"
        for rel, actual in fact["hashes"].items():
            problem = job.model.mismatch(rel, actual, fact["root"], where)
            if problem:
                raise ModelError(problem)
    log.info("Ray nodes checked: %s", sorted({(f["host"], f["python"]) for f in facts}))
    return facts


def _probe_node(blob, shipped, path, relative):
    """Runs on a node, by value: its Python, whether it imports bertbatch, the sha256 of each model file
    (None: missing) in the node's copy (the shipped model, unpacked here once) or at the driver's path."""
    import hashlib
    import importlib
    import os
    import platform
    import shutil
    import socket
    import sys
    import tempfile

    import ray

    node = ray.get_runtime_context().get_node_id()
    fact = {"host": socket.gethostname(), "python": sys.executable, "version": platform.python_version(),
            "pid": os.getpid(), "node": node, "import_error": None, "hashes": {}, "root": path}
    for module in ("bertbatch.ray", "bertbatch.score", "onnxruntime"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a native library that fails to load
            fact["import_error"] = f"{type(exc).__name__}: {exc}"
            break
    if shipped:
        # the same place as node_model_dir(): one copy per node and model content, unpacked under a temporary
        # name and renamed, so a reader never sees half a model
        root = os.path.join(tempfile.gettempdir(), "bertbatch-ray", node[:16], shipped)
        fact["root"] = root
        if not os.path.isdir(root) and blob is not None:
            os.makedirs(os.path.dirname(root), exist_ok=True)
            staging = tempfile.mkdtemp(dir=os.path.dirname(root), prefix=".unpacking-")
            for rel, data in blob.items():
                os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
                with open(os.path.join(staging, rel), "wb") as fh:
                    fh.write(data)
            try:
                os.rename(staging, root)
            except OSError:  # another probe of this node unpacked it first
                shutil.rmtree(staging, ignore_errors=True)
    for rel in relative:
        digest = hashlib.sha256()
        try:
            with open(os.path.join(fact["root"], rel), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            fact["hashes"][rel] = digest.hexdigest()
        except OSError:
            fact["hashes"][rel] = None
    return fact


def node_model_dir(shipped: str) -> Path:
    """This node's unpacked copy of a shipped model (see _probe_node, which makes it)."""
    import tempfile

    import ray

    node = ray.get_runtime_context().get_node_id()
    return Path(tempfile.gettempdir()) / "bertbatch-ray" / node[:16] / shipped


# ------------------------------------------------------------------------------------------------ the mover
def _map(ray, dataset, job: RayJob, actors: int | None):
    from ray.data import ActorPoolStrategy

    size = _pool_size(ray, job, actors)
    return dataset.map_batches(
        ScoringActor, fn_constructor_kwargs={"job": job}, batch_format="pyarrow", batch_size=None,
        compute=ActorPoolStrategy(min_size=1, max_size=size), num_cpus=job.threads, num_gpus=job.gpus or None,
        max_task_retries=-1,  # a task on an actor that died (its node lost) runs again on another actor
    )


def _move(ray, plan, job: RayJob, resumed, actors: int | None):
    """(file index, chunk, labeled batch, counts) in input order, from read tasks through the actor pool."""
    from ray.data import DataContext

    from .plan import BatchCounts, binary_as_text

    DataContext.get_current().execution_options.preserve_order = True  # parts are (file, chunk): input order
    job = replace(job, keep=tuple(plan.keep), config=replace(job.config, keep=tuple(plan.keep)))
    columns = plan.config.read_columns(plan.keep)
    progress = _Progress.of(resumed, len(plan.files))
    source = _InputFiles(plan.files, columns, plan.config, progress, plan.kept_schema,
                         binary_as_text(plan.kept_schema, plan.fmt, plan.config))
    dataset = ray.data.read_datasource(source, override_num_blocks=max(1, len(plan.files)),
                                       num_cpus=0)  # reading is light; the CPUs go to the Scorers
    ends = [i for i in range(len(plan.files)) if not progress.file_done(i)]  # files still to close, in order
    try:
        for table in _map(ray, dataset, job, actors).iter_batches(batch_size=None, batch_format="pyarrow",
                                                                  prefetch_batches=2):
            for index, chunk, piece in _runs(table):
                while ends and ends[0] < index:
                    yield ends.pop(0), None, None, None
                counts = BatchCounts(piece.column("error").to_pylist(), int(_sum(piece, REAL_TAG)),
                                     int(_sum(piece, PADDED_TAG)))
                yield index, chunk, _batch(piece.drop_columns(list(TAGS))), counts
    except Exception as exc:  # a bertbatch error raised on a worker: the one line, not Ray's wrapping
        raise _ours(exc) from None
    for index in ends:
        yield index, None, None, None


def _sum(table: pa.Table, column: str) -> int:
    import pyarrow.compute as pc

    return pc.sum(table.column(column)).as_py() or 0


def _batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def _runs(table: pa.Table):
    """(file index, chunk, rows) for each run of rows of one part, in order."""
    import numpy as np

    if table.num_rows == 0:
        return
    files = table.column(FILE_TAG).to_numpy()
    chunks = table.column(CHUNK_TAG).to_numpy()
    cuts = np.flatnonzero((np.diff(files) != 0) | (np.diff(chunks) != 0)) + 1
    for start, end in zip(np.r_[0, cuts], np.r_[cuts, table.num_rows]):
        yield int(files[start]), int(chunks[start]), table.slice(int(start), int(end - start))


def _ours(exc: BaseException) -> BaseException:
    """The BertbatchError inside a Ray task error, as a fresh one-line error of its class; else `exc`."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BertbatchError) and not type(current).__module__.startswith("ray"):
            return current
        cause = getattr(current, "cause", None)
        todo += [cause, current.__cause__, current.__context__]
        if isinstance(current, BertbatchError):  # Ray's dual-class RayTaskError(InputError): the message's end
            line = [l for l in str(current).strip().splitlines() if l.strip()][-1]
            base = next(c for c in type(current).__mro__ if c.__module__ == "bertbatch.errors")
            return base(line.split(": ", 1)[-1] if line.startswith(base.__name__) else line)
    return exc


@dataclass(frozen=True)
class _Progress:
    """What a resumed job has committed, as read tasks need it (picklable; see Job.rows_done/file_done)."""

    done: frozenset
    rows: tuple

    @classmethod
    def of(cls, job, files: int) -> _Progress:
        if job is None:
            return cls(frozenset(), (0,) * files)
        return cls(frozenset(i for i in range(files) if job.file_done(i)), tuple(job.rows_done(i) for i in range(files)))

    def file_done(self, index: int) -> bool:
        return index in self.done

    def rows_done(self, index: int) -> int:
        return self.rows[index]


class _InputFiles(_Datasource):
    """A Ray Datasource over the plan's files: one read task per file, reading with bertbatch's readers and
    windows (plan.file_windows), each window tagged with its file and part."""

    def __init__(self, files, columns, config, progress, schema, as_text):
        super().__init__()
        self.files, self.columns, self.config, self.progress = files, columns, config, progress
        self.schema, self.as_text = schema, as_text

    def get_name(self) -> str:
        return "bertbatch"

    def estimate_inmemory_data_size(self):
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        tasks = []
        for index, path in enumerate(self.files):
            if self.progress.file_done(index):
                continue
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=[str(path)])
            tasks.append(ReadTask(_read_file(self.files, self.columns, self.config, self.progress, index, self.schema, self.as_text), meta))
        return tasks


def _read_file(files, columns, config, progress, index, schema, as_text):
    def read():
        from .plan import file_windows

        for file_index, chunk, batch in file_windows(files, columns, config, None, progress, only=index,
                                                     schema=schema, as_text=as_text):
            if batch is None:
                continue
            n = batch.num_rows
            tags = [pa.array([file_index] * n, pa.int32()), pa.array([chunk] * n, pa.int32())]
            yield pa.Table.from_batches([batch]).append_column(FILE_TAG, tags[0]).append_column(CHUNK_TAG, tags[1])

    return read


# --------------------------------------------------------------------------------------------- worker side
class ScoringActor:
    """One Scorer per actor, loaded once from this node's hash-checked copy of the model."""

    def __init__(self, job: RayJob):
        import ray

        from .score import Scorer

        self.job = job
        gpu_ids = ray.get_gpu_ids()
        provider = CUDA if gpu_ids and CUDA in available_providers() and job.config.provider != "cpu" else CPU
        threads = job.threads
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # the tokenizers library's pool: this actor's CPUs
        graph = job.config.graph or (job.cpu_graph if provider == CPU else None)
        config = replace(job.config, provider="cuda" if provider == CUDA else "cpu", threads=threads, graph=graph)
        root = node_model_dir(job.model.shipped) if job.model.shipped else Path(job.model.path)
        graph_path = ModelDir.open(root).graph_path(config.graph, provider)
        job.model.verify(root, [*GRAPH_HASHED, str(graph_path.relative_to(root)) if root in graph_path.parents
                                else str(graph_path)])
        self.scorer = Scorer(root, config)
        self.keep = list(job.keep)
        log.info("Ray actor %s loaded %s (%s, %d threads)", os.getpid(), graph_path, provider, threads)

    def __call__(self, table: pa.Table) -> pa.Table:
        from .plan import windows

        tagged = FILE_TAG in table.column_names
        kept = pa.schema([table.schema.field(c) for c in self.keep])
        schema = self.scorer.output_schema(kept)
        if tagged:
            schema = schema.append(pa.field(FILE_TAG, pa.int32())).append(pa.field(CHUNK_TAG, pa.int32()))
            schema = schema.append(pa.field(REAL_TAG, pa.int64())).append(pa.field(PADDED_TAG, pa.int64()))
        out = []
        for _, window in windows(table.to_batches(), self.job.config.window_rows):
            result = self.scorer.run(self.scorer.encode_batch(window))
            labeled = self.scorer.assemble(window, self.keep, result)
            if tagged:
                n = window.num_rows
                columns = dict(zip(labeled.schema.names, labeled.columns))
                columns[FILE_TAG], columns[CHUNK_TAG] = window.column(FILE_TAG), window.column(CHUNK_TAG)
                columns[REAL_TAG] = pa.array([result.real_tokens] + [0] * (n - 1), pa.int64())
                columns[PADDED_TAG] = pa.array([result.padded_tokens] + [0] * (n - 1), pa.int64())
                labeled = pa.RecordBatch.from_pydict(columns)
            out.append(labeled.cast(schema) if labeled.schema != schema else labeled)
        return pa.Table.from_batches(out, schema=schema)

