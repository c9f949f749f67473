"""ONNX export: optimum-onnx export, ORTOptimizer fusions, ORTQuantizer int8, fp16, and a parity gate.

Graphs land in MODEL_DIR/onnx/ (model.onnx fp32 optimized, model_int8.onnx, model_fp16.onnx). Each is run
against PyTorch on validation texts before it is kept; a graph that fails its gate is not written and
`export_onnx` raises ValidationFailed with the figures.
"""

from __future__ import annotations

import collections
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .checkpoint import check_weights_format
from .config import ExportConfig
from .errors import ModelError, ValidationFailed, require
from .manifest import replace_dir, sha256_file, update_manifest, versions
from .metrics import metrics_from_logits
from .modeldir import GRAPH_FILES, ModelDir
from .train import TEST_SPLIT_FILE

log = logging.getLogger(__name__)

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu",
             "FastGelu", "Gelu", "QAttention", "MatMulInteger", "DynamicQuantizeMatMul")
# Files `ORTModelForSequenceClassification.from_pretrained(MODEL_DIR/onnx, file_name=...)` needs beside the graph.
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
VALIDATION_ROWS = 1000
BUILTIN_SAMPLE = [
    "I loved this, it was wonderful and I would do it again.",
    "Terrible service, the food was cold and the staff were rude.",
    "Call now to claim your free prize! Text WIN to 80086.",
    "Are we still meeting for lunch tomorrow at noon?",
    "The quarterly report shows revenue growth across all regions.",
    "This product broke after two days. Waste of money.",
    "ok",
    "Congratulations, you have been selected for a cash award of $1000, reply YES.",
    "The weather forecast says rain later this afternoon, bring an umbrella.",
    "Meh.",
    "An absolutely brilliant performance by the whole cast " * 20,
]


def cpu_preset() -> str:
    """The ORTQuantizer preset for this CPU: avx512_vnni, avx2, or arm64."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def export_onnx(model_dir: str | Path, config: ExportConfig | None = None, **overrides) -> dict:
    """Export, optimize, quantize and validate MODEL_DIR's checkpoint; returns the manifest's `export` section."""
    config = replace(config or ExportConfig(), **overrides)
    model_dir = Path(model_dir)
    model = ModelDir.open(model_dir)
    check_weights_format(str(model_dir), config.allow_pickle)
    require("optimum.onnxruntime", "export", package="optimum-onnx")
    started = time.time()
    texts, targets = _validation_set(model, config)

    with tempfile.TemporaryDirectory(prefix=".onnx-build-", dir=model_dir) as build:
        build = Path(build)
        candidates, trimmed = _build_graphs(model_dir, build, config)
        reference = _logits(model_dir, None, texts)
        figures, failures = {}, []
        for key, path in candidates.items():
            logits = _logits(model_dir, path, texts)
            figures[key] = _parity(key, logits, reference, targets, model, config)
            if not figures[key]["passed"]:
                failures.append(key)
        staging = build / "onnx"
        staging.mkdir()
        graphs = {}
        for key, path in candidates.items():
            if key in failures:
                continue
            final = staging / Path(GRAPH_FILES[key]).name
            shutil.move(path, final)
            graphs[key] = _describe(final, figures[key])
        for name in SIDE_FILES:
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, staging / name)
        replace_dir(staging, model_dir / "onnx")

    section = {
        "graphs": graphs,
        "failed": {key: figures[key] for key in failures},
        "validation": {
            "source": _validation_source(model_dir, config),
            "rows": len(texts),
            "labeled": targets is not None,
            "pytorch": metrics_summary(reference, targets, model) if targets is not None else None,
        },
        "settings": {**asdict(config), "quantize_preset": _preset(config)},
        "first_token_last_layer": trimmed,
        "versions": versions("torch", "transformers", "optimum-onnx", "onnxruntime", "onnx"),
        "seconds": round(time.time() - started, 1),
    }
    update_manifest(model_dir, export=section, graphs={k: {"sha256": v["sha256"]} for k, v in graphs.items()})
    if failures:
        detail = "; ".join(f"{k}: {figures[k]['reason']}" for k in failures)
        raise ValidationFailed(f"Parity gate failed, graph(s) not written: {detail}", {k: figures[k] for k in failures})
    return section


def _preset(config: ExportConfig) -> str:
    return cpu_preset() if config.quantize_preset == "auto" else config.quantize_preset


# ------------------------------------------------------------------------------------------------- building
def _build_graphs(model_dir: Path, build: Path, config: ExportConfig) -> tuple[dict[str, Path], bool]:
    """The candidate graphs by key, and whether the last layer was trimmed to the first token."""
    import warnings

    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    from .checkpoint import load_classifier
    from .trim import trim_last_layer

    raw = build / "raw"
    model = load_classifier(str(model_dir), allow_pickle=config.allow_pickle).eval()
    trimmed = config.trim_last_layer and trim_last_layer(model)
    try:
        with warnings.catch_warnings():  # tracing warns about constants it records: expected here, not for the user
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            onnx_export_from_model(model, output=str(raw), task="text-classification", opset=config.opset,
                                   do_validation=False)
    except Exception as exc:  # optimum raises assorted types for unsupported architectures
        raise ModelError(f"ONNX export of {model_dir} failed: {exc}") from None
    fp32_level, int8_level = ("O1", "O2") if config.optimize == "auto" else (config.optimize, config.optimize)
    optimized = {}

    def level(name: str) -> Path:
        if name == "none":
            return raw / "model.onnx"
        if name not in optimized:
            optimized[name] = _optimize(raw, build / name, name)
        return optimized[name]

    graphs = {"fp32": level(fp32_level)}
    if config.quantize == "int8":
        graphs["int8"] = _quantize_int8(level(int8_level), build / "int8", _preset(config))
    if config.fp16:
        graphs["fp16"] = _to_fp16(raw, build / "fp16")
    return graphs, trimmed


def _optimize(raw: Path, out: Path, level: str) -> Path:
    """A CPU graph at an optimization preset, without SkipLayerNormalization: ORT's CPU kernel for it took
    0.7 ms per call where Add + LayerNormalization take 0.15 (32x26 tokens, MiniLM int8: 29.2 -> 21.4 ms per
    batch; benchmarks/README.md). OrtRunner keeps ORT from fusing it back when the session opens."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    # The presets, not OptimizationConfig(optimization_level=3): ORT's optimizer accepts only 0/1/2/99.
    preset = getattr(AutoOptimizationConfig, level)(disable_skip_layer_norm_fusion=True)
    ORTOptimizer.from_pretrained(raw).optimize(preset, save_dir=out)
    return out / "model_optimized.onnx"


def _quantize_int8(graph: Path, out: Path, preset: str) -> Path:
    """Dynamic int8 with ORTQuantizer. On a fused (O2) graph, ORT's MatMul quantizer needs the type of every
    MatMul output, which plain ONNX shape inference cannot see through com.microsoft ops (Attention):
    "Unable to find data type for weight_name ...". Symbolic shape inference fills those types in first."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    work = out / "in"
    shutil.copytree(graph.parent, work)
    typed = SymbolicShapeInference.infer_shapes(onnx.load(str(work / graph.name)), auto_merge=True)
    onnx.save(typed, str(work / graph.name))
    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=True)
    ORTQuantizer.from_pretrained(work, file_name=graph.name).quantize(qconfig, save_dir=out / "q")
    return out / "q" / f"{graph.stem}_quantized.onnx"


def _to_fp16(raw: Path, out: Path) -> Path:
    """fp16 for GPU: convert the fp32 export (exporting fp16 straight from torch gives graphs ORT refuses).
    Inputs stay int64 and logits float32 (optimum keeps I/O types), so the runner needs no special case."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    fp16 = OptimizationConfig(optimization_level=2, optimize_for_gpu=True, fp16=True)
    ORTOptimizer.from_pretrained(raw).optimize(fp16, save_dir=out)
    return out / "model_optimized.onnx"


# ----------------------------------------------------------------------------------------------- validation
def _validation_source(model_dir: Path, config: ExportConfig) -> str:
    if config.validate:
        return str(config.validate)
    if (model_dir / TEST_SPLIT_FILE).exists():
        return str(model_dir / TEST_SPLIT_FILE)
    return "built-in sample (unlabeled)"


def _validation_set(model: ModelDir, config: ExportConfig):
    """Texts and (when known) targets for the parity gate, capped at VALIDATION_ROWS (seeded sample)."""
    from .data import read_labeled

    source = _validation_source(model.path, config)
    if source.startswith("built-in"):
        return list(BUILTIN_SAMPLE), None
    text_column = config.text_column if config.validate else "text"
    label_column = config.label_column if config.validate else "label"
    data = read_labeled(source, text_column, label_column, multi_label=model.multi_label, labels=model.labels)
    if len(data) > VALIDATION_ROWS:
        data = data.subset(np.sort(np.random.default_rng(0).choice(len(data), VALIDATION_ROWS, replace=False)))
    return data.texts, data.targets


def _logits(model_dir: Path, graph: Path | None, texts: list[str]) -> np.ndarray:
    """Logits through the same tokenization and batching that `score` uses; graph None = PyTorch."""
    from .runtime import CPU, OrtRunner, TorchRunner
    from .score import Scorer

    runner = TorchRunner(model_dir) if graph is None else OrtRunner(graph, CPU)
    return Scorer(model_dir, runner=runner).logits(texts).logits


def metrics_summary(logits: np.ndarray, targets, model: ModelDir) -> dict:
    m = metrics_from_logits(logits, targets, model.labels, model.multi_label)
    return {k: round(v, 6) for k, v in m.items() if isinstance(v, float)}


def _parity(key: str, logits: np.ndarray, reference: np.ndarray, targets, model: ModelDir, config: ExportConfig):
    delta = float(np.abs(logits - reference).max()) if len(logits) else 0.0
    if model.multi_label:
        agree = float(np.mean(np.all((logits > 0) == (reference > 0), axis=1)))
    else:
        agree = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    figures = {"max_abs_logit_delta": delta, "top1_agreement": agree}
    reason = None
    if targets is not None:
        mine, theirs = metrics_summary(logits, targets, model), metrics_summary(reference, targets, model)
        figures.update(metrics=mine, macro_f1_drop=round(theirs["macro_f1"] - mine["macro_f1"], 6))
    if key == "fp32" and (delta > config.max_fp32_delta or agree < 1.0):
        reason = f"max |Δlogit| {delta:.2e} (limit {config.max_fp32_delta:.0e}), top-1 agreement {agree:.2%} (needs 100%)"
    elif key == "fp16" and delta > config.max_fp16_delta:
        reason = f"max |Δlogit| {delta:.2e} (limit {config.max_fp16_delta})"
    elif key == "int8" and targets is not None and figures["macro_f1_drop"] > config.max_f1_drop:
        reason = f"macro-F1 drop {figures['macro_f1_drop']:.4f} (limit {config.max_f1_drop})"
    elif key == "int8" and targets is None and agree < config.min_unlabeled_agreement:
        reason = f"top-1 agreement {agree:.2%} on unlabeled texts (needs {config.min_unlabeled_agreement:.0%})"
    figures.update(passed=reason is None, reason=reason)
    return figures


def _describe(path: Path, figures: dict) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    return {
        "file": f"onnx/{path.name}",
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "sha256": sha256_file(path),
        "opset": max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "inputs": [i.name for i in graph.graph.input],
        "fusions": {op: ops[op] for op in FUSED_OPS if ops[op]},
        "parity": {k: v for k, v in figures.items() if k not in ("passed", "reason")},
    }


def graph_line(graph: dict) -> str:
    """One line per graph for consoles: size and parity figures."""
    p = graph["parity"]
    f1 = f", macro-F1 {p['metrics']['macro_f1']:.4f} (drop {p['macro_f1_drop']:+.4f})" if "metrics" in p else ""
    return (f"{graph['file']}: {graph['size_mb']} MB, max |Δlogit| {p['max_abs_logit_delta']:.2e}, "
            f"top-1 agreement {p['top1_agreement']:.2%}{f1}")
