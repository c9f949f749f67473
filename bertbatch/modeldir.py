"""The model directory contract: config + tokenizer + weights, `onnx/` graphs, `bertbatch.json`.

Reading it needs no torch: labels come from config.json, the tokenizer from tokenizer.json (Rust tokenizers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError
from .manifest import MANIFEST, read_json_object, read_manifest, sha256_file
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
        """Open and validate a model directory as a whole: its JSON files parse, types are right, labels unique.

        Every problem is a ModelError (exit 3) naming the file and, where there is one, the key. tokenizer.json
        (hundreds of kB) is checked where it is loaded, `tokenizer()`, which the Scorer calls before the graph."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelError(f"{path} is not a model directory: config.json is missing.")
        config = read_json_object(config_file)
        labels = _labels(config, config_file)
        manifest = read_manifest(path)
        _check_manifest(manifest, path / MANIFEST)
        positions = config.get("max_position_embeddings")
        if positions is not None and not _positive_int(positions):
            raise ModelError(f"{config_file}: max_position_embeddings must be a positive integer; got {positions!r}.")
        max_length = manifest.get("max_length") or _tokenizer_max_length(path) or positions or 512
        if config.get("problem_type") not in (None, "single_label_classification", "multi_label_classification"):
            raise ModelError(f"{config_file}: problem_type must be single_label_classification or "
                             f"multi_label_classification; got {config.get('problem_type')!r}.")
        return cls(
            path=path,
            labels=labels,
            multi_label=config.get("problem_type") == "multi_label_classification",
            max_length=int(min(max_length, positions or max_length)),
            name=str(manifest.get("name", path.name)),
            manifest=manifest,
            config=config,
        )

    @property
    def position_limit(self) -> int:
        """The most tokens one segment may hold: the model's position embeddings (512 when not recorded)."""
        return int(self.config.get("max_position_embeddings") or 512)

    def graph_path(self, graph: str | None, provider: str) -> Path | None:
        """The .onnx file to run: explicit name/path, else `default_graph`.

        Returns None when the directory has no ONNX graph (a plain checkpoint: PyTorch backend).
        """
        if graph and graph.endswith(".onnx"):
            chosen = Path(graph) if Path(graph).is_absolute() else self.path / graph
            if not chosen.exists():
                raise ModelError(f"Graph {chosen} does not exist.")
            return _graph_file(chosen)
        if graph == "torch":
            return None
        if graph:
            if graph not in GRAPH_FILES:
                raise ModelError(f"--graph must be {', '.join(GRAPH_FILES)}, torch or a path to an .onnx file; got '{graph}'.")
            chosen = self.path / GRAPH_FILES[graph]
            if not chosen.exists():
                raise ModelError(f"{chosen} does not exist; run `bertbatch export {self.path}` (see --help).")
            return _graph_file(chosen)
        key, _ = self.default_graph(provider)
        return None if key is None else _graph_file(self.path / GRAPH_FILES[key])

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
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception on a bad file
            raise ModelError(f"{file}: not a tokenizer the tokenizers library can load ({str(exc)[:200]}). "
                             "Re-save the tokenizer with transformers.") from None
        tok.no_padding()
        tok.enable_truncation(max_length or self.max_length, stride=stride)
        return tok


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _labels(config: dict, config_file: Path) -> list[str]:
    """Label names in class order from id2label: keys the integers 0..n-1, names non-empty and unique."""
    id2label = config.get("id2label")
    if not id2label:
        raise ModelError(f"{config_file} has no id2label: the model's label names are unknown.")
    if not isinstance(id2label, dict):
        raise ModelError(f"{config_file}: id2label must map class ids to names; got {type(id2label).__name__}.")
    try:
        ids = {int(k): v for k, v in id2label.items()}
    except ValueError:
        raise ModelError(f"{config_file}: id2label keys must be the integers 0..{len(id2label) - 1}; "
                         f"got {sorted(id2label)}.") from None
    if sorted(ids) != list(range(len(ids))):
        raise ModelError(f"{config_file}: id2label keys must be the integers 0..{len(ids) - 1}; got {sorted(ids)}.")
    labels = [ids[i] for i in range(len(ids))]
    if not all(isinstance(name, str) and name for name in labels):
        raise ModelError(f"{config_file}: id2label names must be non-empty strings; got {labels}.")
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise ModelError(f"{config_file}: id2label names {duplicates} more than one class; each label needs its own "
                         "name (their prob_ columns and labels would be indistinguishable).")
    label2id = config.get("label2id")
    if label2id is not None and label2id != {name: i for i, name in enumerate(labels)}:
        raise ModelError(f"{config_file}: label2id {label2id} contradicts id2label {id2label}; make them agree.")
    return labels


def _check_manifest(manifest: dict, file: Path) -> None:
    """The bertbatch.json fields open() reads have their types."""
    value = manifest.get("max_length")
    if value is not None and not _positive_int(value):
        raise ModelError(f"{file}: max_length must be a positive integer; got {value!r}.")
    for key in ("graphs", "export", "tune"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise ModelError(f"{file}: {key} must be a JSON object; got {type(manifest[key]).__name__}.")


def _graph_file(chosen: Path) -> Path:
    if not chosen.is_file():
        raise ModelError(f"Graph {chosen} is not a file (a directory stands there); point --graph at an .onnx "
                         "file or re-export the model.")
    return chosen


def _tokenizer_max_length(path: Path) -> int | None:
    file = path / "tokenizer_config.json"
    if file.exists():
        value = read_json_object(file).get("model_max_length")
        if isinstance(value, int) and 0 < value < 100_000:
            return value
    return None
