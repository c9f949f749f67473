"""The model directory contract: config + tokenizer + weights, `onnx/` graphs, `bertbatch.json`.

Reading it needs no torch: labels come from config.json, the tokenizer from tokenizer.json (Rust tokenizers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError
from .manifest import read_manifest, sha256_file
from .runtime import CUDA

GRAPH_FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model_int8.onnx", "fp16": "onnx/model_fp16.onnx",
               "int8-dynamic": "onnx/model_int8_dynamic.onnx"}


@dataclass
class ModelDir:
    path: Path
    labels: list[str]
    multi_label: bool
    max_length: int
    name: str
    manifest: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # config.json as written by transformers

    @classmethod
    def open(cls, path: str | Path) -> "ModelDir":
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.exists():
            raise ModelError(f"{path} is not a model directory: config.json is missing.")
        config = json.loads(config_file.read_text())
        id2label = config.get("id2label") or {}
        labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
        if not labels:
            raise ModelError(f"{config_file} has no id2label: the model's label names are unknown.")
        manifest = read_manifest(path)
        max_length = manifest.get("max_length") or _tokenizer_max_length(path) or config.get("max_position_embeddings", 512)
        return cls(
            path=path,
            labels=labels,
            multi_label=config.get("problem_type") == "multi_label_classification",
            max_length=int(min(max_length, config.get("max_position_embeddings", max_length))),
            name=manifest.get("name", path.name),
            manifest=manifest,
            config=config,
        )

    def graph_path(self, graph: str | None, provider: str) -> Path | None:
        """The .onnx file to run: explicit name/path, else `default_graph`.

        Returns None when the directory has no ONNX graph (a plain checkpoint: PyTorch backend).
        """
        if graph and graph.endswith(".onnx"):
            chosen = Path(graph) if Path(graph).is_absolute() else self.path / graph
            if not chosen.exists():
                raise ModelError(f"Graph {chosen} does not exist.")
            return chosen
        if graph == "torch":
            return None
        if graph:
            if graph not in GRAPH_FILES:
                raise ModelError(f"--graph must be {', '.join(GRAPH_FILES)}, torch or a path to an .onnx file; got '{graph}'.")
            chosen = self.path / GRAPH_FILES[graph]
            if not chosen.exists():
                raise ModelError(f"{chosen} does not exist; run `bertbatch export {self.path}` (see --help).")
            return chosen
        key, _ = self.default_graph(provider)
        return None if key is None else self.path / GRAPH_FILES[key]

    def default_graph(self, provider: str) -> tuple[str | None, str]:
        """The graph `score` runs when neither --graph nor a tune record says otherwise, and why: fp16 then fp32
        on CUDA; on CPU int8 when its export passed the batch-invariance gate, else fp32. Never dynamic int8."""
        present = {k for k, f in GRAPH_FILES.items() if (self.path / f).exists()}
        if provider == CUDA:
            key = next((k for k in ("fp16", "fp32") if k in present), None)
            return key, f"{key} is the first of fp16, fp32 present for CUDA" if key else "no ONNX graph"
        if "int8" in present and self.batch_invariant("int8"):
            return "int8", "int8 passed the export's batch-invariance gate"
        if "fp32" in present:
            why = ("its int8 graph was exported before the batch-invariance gate (re-export to use int8)"
                   if "int8" in present else "no int8 graph")
            return "fp32", f"fp32: {why}"
        return None, "no ONNX graph"

    def batch_invariant(self, key: str) -> bool:
        """Whether the export recorded that graph `key` passed the batch-invariance gate."""
        return bool(self.manifest.get("export", {}).get("graphs", {}).get(key, {}).get("batch_invariant"))

    def graph_key(self, graph_path: Path | None) -> str:
        if graph_path is None:
            return "torch"
        return next((k for k, v in GRAPH_FILES.items() if self.path / v == graph_path), str(graph_path))

    def model_hash(self, graph_path: Path | None) -> str:
        """Hash of what actually runs: the graph, or the safetensors weights for the PyTorch backend."""
        recorded = self.manifest.get("graphs", {}).get(self.graph_key(graph_path), {}).get("sha256")
        if recorded:
            return recorded
        target = graph_path or self.path / "model.safetensors"
        return sha256_file(target) if target.exists() else ""

    def tokenizer(self, max_length: int | None = None, stride: int = 0):
        """The fast tokenizer from tokenizer.json, with truncation on and padding off (batching pads)."""
        from tokenizers import Tokenizer

        file = self.path / "tokenizer.json"
        if not file.exists():
            raise ModelError(
                f"{self.path} has no tokenizer.json (fast tokenizer). Re-save the tokenizer with transformers "
                "(AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) to create it."
            )
        tok = Tokenizer.from_file(str(file))
        tok.no_padding()
        tok.enable_truncation(max_length or self.max_length, stride=stride)
        return tok


def _tokenizer_max_length(path: Path) -> int | None:
    file = path / "tokenizer_config.json"
    if file.exists():
        value = json.loads(file.read_text()).get("model_max_length")
        if isinstance(value, int) and 0 < value < 100_000:
            return value
    return None
