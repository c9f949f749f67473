"""Runners that turn padded batches into logits: ONNX Runtime (CPU/CUDA, IOBinding) and PyTorch (parity).

Every runner satisfies `Runner`; the scorer uses nothing else of it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .embedding import OUTPUT as EMBEDDING_OUTPUT
from .embedding import definition, head_projection
from .errors import ModelError, require
from .machine import available_cpus

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@runtime_checkable
class Runner(Protocol):
    """What the scorer needs of a backend.

    `graph` is the path of the ONNX file that runs, or None for a runner that runs no file (PyTorch runs the
    checkpoint's weights; the model directory's `model_hash(None)` hashes model.safetensors for it). `threads`
    is the intra-op thread count when the runner has one; `num_labels` the logit width when the runner knows
    it before running (checked against config.json at start). A runner that can return the embedding
    (bertbatch/embedding.py) has `embedding_size`, its width (None or absent: it cannot), and accepts
    `run(..., embeddings=True)`; the scorer passes that keyword only when embeddings are asked for."""

    provider: str
    input_names: list[str]
    graph: str | None
    threads: int | None
    num_labels: int | None

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None) -> np.ndarray:
        """(rows, length) int64 inputs -> (rows, num_labels) float32 logits; with embeddings=True, the tuple
        (logits, (rows, embedding_size) float32 embeddings)."""
        ...


def available_providers() -> list[str]:
    ort = require("onnxruntime", "cpu", package="onnxruntime (or onnxruntime-gpu)")
    return list(ort.get_available_providers())


def resolve_provider(requested: str, available: list[str] | None = None) -> str:
    """`auto` takes CUDA when onnxruntime offers it, else CPU; `cuda` without CUDA is an error."""
    available = available_providers() if available is None else available
    if requested == "cpu":
        return CPU
    if requested == "cuda" and CUDA not in available:
        raise ModelError(
            f"--provider cuda asked, but onnxruntime offers only {available}. Install the GPU runtime "
            "(pip uninstall onnxruntime && pip install 'bertbatch[gpu]') on a machine with CUDA, or use --provider cpu."
        )
    if requested in ("cuda", "auto") and CUDA in available:
        return CUDA
    return CPU


def may_reference_external_data(graph: str | Path) -> bool:
    """False only when the graph cannot name an external-data file: a tensor's external data is found through
    a StringStringEntryProto whose key is the bytes `location`, stored verbatim in the protobuf, so a file
    without those bytes has none. One memory-speed pass over the mapped file (like hashing it) instead of
    importing onnx and parsing the whole graph (~1 s, benchmarks/startup.md)."""
    import mmap

    with open(graph, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(b"location") != -1


def check_external_data(graph: str | Path) -> None:
    """Refuse a graph whose external-data files lie outside its directory (a path-traversal read)."""
    if not may_reference_external_data(graph):
        return
    import onnx
    from onnx.external_data_helper import uses_external_data

    root = Path(graph).resolve().parent
    model = onnx.load(str(graph), load_external_data=False)
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if Path(location).is_absolute() or root not in target.parents:
            raise ModelError(
                f"{graph}: tensor '{tensor.name}' points at external data '{location}' outside the model "
                "directory; refusing to load it."
            )


class BufferCache:
    """Buffers kept by key (a batch shape) and reused, the least recently used dropped past `capacity`.

    Token-budget batches come in few shapes (GPU buckets x row counts), so device input buffers are made once
    per shape and refilled in place instead of allocated for every batch."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self.made = 0  # buffers allocated so far
        self._items: OrderedDict = OrderedDict()

    def get(self, key, make: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        while len(self._items) >= self.capacity:
            self._items.popitem(last=False)
        self._items[key] = value = make()
        self.made += 1
        return value

    def __len__(self) -> int:
        return len(self._items)


class OrtRunner:
    """An ONNX Runtime session that feeds only the inputs the graph declares."""

    def __init__(self, graph: str | Path, provider: str = CPU, threads: int | None = None, device_id: int = 0):
        ort = require("onnxruntime", "cpu", package="onnxruntime (or onnxruntime-gpu)")
        check_external_data(graph)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cpus()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [CPU] if provider == CPU else [(CUDA, {"device_id": device_id}), CPU]
        if provider == CUDA and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu[cuda,cudnn] installs CUDA/cuDNN as pip packages that the loader does not search;
            # preload_dlls (ORT >= 1.21) loads them from there, else from the system paths.
            ort.preload_dlls()
        # On CPU, ORT's SkipLayerNormalization kernel is ~4x slower than the Add + LayerNormalization it
        # replaces (export.py leaves it out of CPU graphs); keep the session from fusing it back.
        disabled = ["SkipLayerNormFusion"] if provider == CPU else []
        try:
            self.session = ort.InferenceSession(str(graph), sess_options=options, providers=providers,
                                                disabled_optimizers=disabled)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise ModelError(f"onnxruntime cannot load {graph}: {exc}. The file is damaged or not ONNX; run "
                             f"`bertbatch export` on the model directory again.") from None
        active = self.session.get_providers()
        if provider == CUDA and active[0] != CUDA:
            # ORT silently falls back to CPU when CUDA libraries are missing: make that loud.
            raise ModelError(f"CUDA was requested but onnxruntime fell back to {active} (check CUDA/cuDNN libraries).")
        self.provider = active[0]
        self.graph = str(graph)
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = self.session.get_outputs()
        self.output_name = outputs[0].name
        width = outputs[0].shape[-1]
        self.num_labels = width if isinstance(width, int) else None
        # graphs exported before bertbatch added the embedding output have none: embedding_size stays None
        embedding = next((o for o in outputs[1:] if o.name == EMBEDDING_OUTPUT), None)
        self.embedding_size = embedding.shape[-1] if embedding is not None and isinstance(embedding.shape[-1], int) else None
        self.threads = options.intra_op_num_threads
        self._binding = self.session.io_binding() if self.provider == CUDA else None
        self._device, self._device_id = "cuda", device_id
        self._inputs = BufferCache()  # (input name, shape) -> device OrtValue, refilled per batch

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None,
            embeddings: bool = False):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        if embeddings:  # the extra output is fetched only when asked: scoring without it copies nothing more
            if self.embedding_size is None:
                raise ModelError(f"{self.graph} has no embedding output; re-export with `bertbatch export`.")
            names = [self.output_name, EMBEDDING_OUTPUT]
            logits, vectors = self._run_bound(feeds, names) if self._binding is not None else self.session.run(names, feeds)
            return np.asarray(logits, dtype=np.float32), np.asarray(vectors, dtype=np.float32)
        if self._binding is not None:
            return self._run_bound(feeds)[0]
        return np.asarray(self.session.run([self.output_name], feeds)[0], dtype=np.float32)

    def _run_bound(self, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
        """CUDA: copy inputs into device buffers made once per batch shape, let ORT allocate the outputs there
        (the logits, and the embedding when asked), copy them back."""
        ort = require("onnxruntime", "cpu")
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in feeds.items():
            shape = array.shape
            value = self._inputs.get((name, shape), lambda: ort.OrtValue.ortvalue_from_shape_and_type(
                shape, np.int64, self._device, self._device_id))
            value.update_inplace(np.ascontiguousarray(array, dtype=np.int64))
            binding.bind_ortvalue_input(name, value)
        for name in outputs or [self.output_name]:
            binding.bind_output(name, self._device)
        self.session.run_with_iobinding(binding)
        return [np.asarray(value, dtype=np.float32) for value in binding.copy_outputs_to_cpu()]


class TorchRunner:
    """PyTorch backend on a HF checkpoint: for parity checks and baselines, not for speed."""

    provider = "torch-cpu"

    def __init__(self, model_dir: str | Path, threads: int | None = None, allow_pickle: bool = False):
        from .checkpoint import load_classifier

        self.torch = require("torch", "train")
        if threads:
            self.torch.set_num_threads(threads)
        self.model = load_classifier(str(model_dir), allow_pickle=allow_pickle).eval()
        self.input_names = ["input_ids", "attention_mask"]
        if getattr(self.model.config, "type_vocab_size", 0):
            self.input_names.append("token_type_ids")
        self.graph = None  # runs model.safetensors, not a graph file
        self.num_labels = self.model.config.num_labels
        self.threads = self.torch.get_num_threads()
        family = definition(self.model.config.model_type) is not None
        self.embedding_size = self.model.config.hidden_size if family else None

    def run(self, input_ids, attention_mask, token_type_ids=None, embeddings: bool = False):
        torch = self.torch
        feeds = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
        if "token_type_ids" in self.input_names and token_type_ids is not None:
            feeds["token_type_ids"] = torch.from_numpy(token_type_ids)
        with torch.inference_mode():
            if not embeddings:
                return self.model(**feeds).logits.float().numpy()
            seen = []  # the head's last projection's input is the embedding (bertbatch/embedding.py)
            hook = head_projection(self.model).register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
            try:
                logits = self.model(**feeds).logits.float().numpy()
            finally:
                hook.remove()
            return logits, seen[0].float().numpy()
