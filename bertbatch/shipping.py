"""Shipping a model to distributed workers (Spark executors, Ray actors): which files travel, their sha256 on the
driver, and the one-line message when a worker's copy differs; `by_value`, for probes that must run where
bertbatch cannot be imported.
"""

from __future__ import annotations

import socket
import types
from dataclasses import dataclass
from pathlib import Path

from .config import ScoreConfig
from .errors import ModelError
from .manifest import sha256_file
from .modeldir import ModelDir
from .runtime import CPU, CUDA

# Files needed to score besides the ONNX graph; weights, checkpoints and data stay behind when shipping.
SHIPPED_SUFFIXES = (".json", ".txt", ".model")
GRAPH_HASHED = ("config.json", "tokenizer.json")


@dataclass(frozen=True)
class ModelShipment:
    """Where executors find the model directory, and the driver's sha256 of each file they may load."""

    path: str  # the driver's absolute path: read as is on executors unless shipped
    shipped: str | None  # the SparkFiles name when the directory travels with the job
    hashes: tuple  # ((path relative to the model directory, sha256), ...)

    # what to do about a shipped copy that differs (the engine's words); None: Spark's
    shipped_fix: str | None = None
    where: str = "executor"  # what the engine calls the process that loads the model

    def root(self) -> Path:
        if self.shipped:
            from pyspark import SparkFiles

            return Path(SparkFiles.get(self.shipped))
        return Path(self.path)

    def fix(self) -> str:
        """What to do about a model file that differs between the driver and an executor."""
        if self.shipped and self.shipped_fix:
            return self.shipped_fix
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
        where = f"{self.where} {socket.gethostname()}"
        for rel in relative:
            file = root / rel
            problem = self.mismatch(rel, sha256_file(file) if file.exists() else None, root, where)
            if problem:
                raise ModelError(problem)


def executor_graph(root: Path, graph: str | None, ship: bool) -> str | None:
    """An explicit .onnx path as executors must see it: relative to the model directory when inside it."""
    if not graph or not graph.endswith(".onnx") or not Path(graph).is_absolute():
        return graph
    path = Path(graph).resolve()
    if root in path.parents:
        return str(path.relative_to(root))
    if ship:
        raise ModelError(f"Graph {graph} lies outside the model directory {root}; move it inside to ship it.")
    return str(path)


def candidate_graphs(model: ModelDir, config: ScoreConfig, cpu_graph: str | None = None) -> list[str]:
    """The graphs an executor may pick: for `auto`, the CPU choice and the CUDA one (a task may hold a GPU)."""
    providers = {"cpu": [CPU], "cuda": [CUDA], "auto": [CPU, CUDA]}[config.provider]
    graphs = {model.graph_path(cpu_graph if p == CPU and cpu_graph else config.graph, p) for p in providers}
    if None in graphs:
        raise ModelError(
            f"Distributed scoring runs ONNX graphs and {model.path} has none{' (--graph torch)' if config.graph else ''}. "
            f"Run `bertbatch export {model.path}` first."
        )
    return sorted(str(g.relative_to(model.path)) if model.path in g.parents else str(g) for g in graphs)


DRIVER_HASHES: dict[tuple, str] = {}


def hash_files(root: Path, relative: list[str]) -> tuple:
    """sha256 of each file (cached on path, size and mtime: a model is hashed once per driver process)."""
    out = []
    for rel in dict.fromkeys(relative):
        file = root / rel
        if not file.exists():
            raise ModelError(f"{file} is missing; {root} is not a complete model directory.")
        stat = file.stat()
        key = (str(file), stat.st_size, stat.st_mtime_ns)
        if key not in DRIVER_HASHES:
            DRIVER_HASHES[key] = sha256_file(file)
        out.append((rel, DRIVER_HASHES[key]))
    return tuple(out)


def shipped_files(root: Path, hashed: list[str]) -> list[Path]:
    """The files a shipped copy holds: top-level configs and tokenizer, onnx/ side files, the hashed graphs."""
    wanted = [p for p in root.iterdir() if p.is_file() and p.name.endswith(SHIPPED_SUFFIXES)]
    onnx = root / "onnx"
    if onnx.is_dir():  # configs and external-data files beside the graphs, but only the graphs that may run
        wanted += [p for p in onnx.iterdir() if p.is_file() and not p.name.endswith(".onnx")]
    return list(dict.fromkeys(wanted + [root / rel for rel in hashed]))


def by_value(fn):
    """A copy of `fn` that cloudpickle ships by value (as if defined in __main__), not as `bertbatch.spark.fn`."""
    import builtins

    clone = types.FunctionType(fn.__code__, {"__builtins__": builtins}, fn.__name__, fn.__defaults__)
    clone.__module__, clone.__qualname__ = "__main__", fn.__name__
    return clone
