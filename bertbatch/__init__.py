"""bertbatch: fine-tune, export and batch-score BERT-family text classifiers.

Public API (imported lazily so `import bertbatch` and scoring never import torch):
    fine_tune, export_onnx, Scorer, score_file, score_batches, evaluate, benchmark
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "fine_tune": "train",
    "TrainConfig": "config",
    "ExportConfig": "config",
    "ScoreConfig": "config",
    "EvalConfig": "config",
    "BenchConfig": "config",
    "TuneConfig": "config",
    "SparkConfig": "config",
    "export_onnx": "export",
    "Scorer": "score",
    "score_file": "pipeline",
    "score_batches": "stream",
    "evaluate": "evaluate",
    "benchmark": "bench",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'bertbatch' has no attribute {name!r}")
