"""ONNX export: optimum-onnx export, ORTOptimizer fusions, calibrated static int8, fp16, and the gates.

Graphs land in MODEL_DIR/onnx/ (model.onnx fp32 optimized, model_int8.onnx static int8, model_fp16.onnx, and on
request model_int8_dynamic.onnx). Each is run against PyTorch on validation texts before it is kept; a graph
that fails its gate is not written and `export_onnx` raises ValidationFailed with the figures.

The gates: parity with PyTorch on the held-out split, agreement on out-of-domain text, and, for the CPU graphs
`score` may pick by default (fp32, int8), batch invariance: the same texts in other batchings (one row per
batch, shuffled rows under a small budget, a large budget, extra padding) give the same labels and
probabilities (and embeddings) within 1e-6. Dynamic int8 cannot keep it (ONNX Runtime scales each activation over the whole
batch tensor, padding included): it is written only on request, its figures are recorded, it is never a default.

Every graph also outputs the embedding (bertbatch/embedding.py) for the model families that define one: fp32
must match PyTorch's within max_fp32_delta; the others' agreement (cosine similarity) is recorded.
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
from .embedding import OUTPUT as EMBEDDING_OUTPUT
from .embedding import add_output as add_embedding_output
from .embedding import definition
from .config import ExportConfig, ScoreConfig
from .errors import ModelError, ValidationFailed, require
from .gates import (BUILTIN_SAMPLE, INVARIANCE_ROWS, agreement, invariance_figures, judge, metrics_summary,
                    out_of_domain_texts, parity)
from .machine import cpu_flags
from .manifest import replace_dir, sha256_file, update_manifest, versions
from .modeldir import GRAPH_FILES, ModelDir
from .quantize import quantize_static
from .train import TEST_SPLIT_FILE

log = logging.getLogger(__name__)

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu",
             "FastGelu", "Gelu", "QAttention", "MatMulInteger", "DynamicQuantizeMatMul")
# Files `ORTModelForSequenceClassification.from_pretrained(MODEL_DIR/onnx, file_name=...)` needs beside the graph.
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
VALIDATION_ROWS = 1000


def cpu_preset() -> str:
    """The ORTQuantizer preset for this CPU: avx512_vnni, avx2, or arm64."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    return "avx512_vnni" if "avx512_vnni" in cpu_flags() else "avx2"


def export_onnx(model_dir: str | Path, config: ExportConfig | None = None, **overrides) -> dict:
    """Export, optimize, quantize and validate MODEL_DIR's checkpoint; returns the manifest's `export` section."""
    config = replace(config or ExportConfig(), **overrides)
    model_dir = Path(model_dir)
    model = ModelDir.open(model_dir)
    check_weights_format(str(model_dir), config.allow_pickle)
    require("optimum.onnxruntime", "export", package="optimum-onnx")
    started = time.time()
    texts, targets = _validation_set(model, config)
    ood_texts, ood_source = out_of_domain_texts()
    width = int(model.config["hidden_size"]) if definition(model.config.get("model_type")) else None

    with tempfile.TemporaryDirectory(prefix=".onnx-build-", dir=model_dir) as build:
        build = Path(build)
        candidates, trimmed = _build_graphs(model_dir, build, config, calibration_texts(texts, config), width)
        reference = _outputs(model_dir, None, texts, width)
        ood_reference = _outputs(model_dir, None, ood_texts).logits
        figures, failures = {}, []
        for key, path in candidates.items():
            scored = _outputs(model_dir, path, texts, width)
            figures[key] = parity(key, scored.logits, reference.logits, targets, model, config)
            if width:
                figures[key].update(_embedding_agreement(scored.embeddings, reference.embeddings))
            if key != "fp16":  # fp16 is a GPU graph: its CPU run says nothing about CUDA kernels
                figures[key]["out_of_domain"] = agreement(_outputs(model_dir, path, ood_texts).logits, ood_reference, model)
                figures[key]["invariance"] = invariance_figures(model_dir, path, texts[:INVARIANCE_ROWS] + ood_texts[:INVARIANCE_ROWS])
            judge(key, figures[key], config)
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
            "pytorch": metrics_summary(reference.logits, targets, model) if targets is not None else None,
            "out_of_domain": {"source": ood_source, "rows": len(ood_texts)},
            "invariance_rows": min(len(texts), INVARIANCE_ROWS) + min(len(ood_texts), INVARIANCE_ROWS),
        },
        "settings": {**asdict(config), "quantize_preset": _preset(config)},
        "first_token_last_layer": trimmed,
        "embedding": ({"output": EMBEDDING_OUTPUT, "size": width, "definition": definition(model.config.get("model_type"))}
                      if width else {"output": None, "reason": f"no embedding defined for model type "
                                                              f"'{model.config.get('model_type')}' (embedding.py)"}),
        "truncation": _truncation_read(model),  # what the gates and calibration read of long texts
        "versions": versions("torch", "transformers", "optimum-onnx", "onnxruntime", "onnx"),
        "seconds": round(time.time() - started, 1),
    }
    # A new export invalidates tune records: they timed the graphs this export replaces.
    update_manifest(model_dir, export=section, graphs={k: {"sha256": v["sha256"]} for k, v in graphs.items()},
                    tune={})
    if failures:
        detail = "; ".join(f"{k}: {figures[k]['reason']}" for k in failures)
        raise ValidationFailed(f"Export gate failed, graph(s) not written: {detail}", {k: figures[k] for k in failures})
    return section


def _preset(config: ExportConfig) -> str:
    return cpu_preset() if config.quantize_preset == "auto" else config.quantize_preset


# ------------------------------------------------------------------------------------------------- building
def _build_graphs(model_dir: Path, build: Path, config: ExportConfig, calibration: list[str],
                  embedding_width: int | None = None) -> tuple[dict[str, Path], bool]:
    """The candidate graphs by key, and whether the last layer was trimmed to the first token. With an
    embedding width, the exported graph gets the embedding output first, so every graph made from it has it."""
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
    if embedding_width:
        add_embedding_output(raw / "model.onnx", embedding_width)
    fp32_level, dynamic_level = ("O1", "O2") if config.optimize == "auto" else (config.optimize, config.optimize)
    optimized = {}

    def level(name: str) -> Path:
        if name == "none":
            return raw / "model.onnx"
        if name not in optimized:
            optimized[name] = _optimize(raw, build / name, name)
        return optimized[name]

    graphs = {"fp32": level(fp32_level)}
    if config.quantize == "int8":
        # from the fused graph: its QAttention and integer MatMuls are dynamic int8's kernels (see quantize.py)
        graphs["int8"] = quantize_static(level(dynamic_level), build / "int8",
                                         _calibration_feeds(model_dir, calibration), config.reduce_range)
    if config.int8_dynamic:
        graphs["int8-dynamic"] = _quantize_dynamic(level(dynamic_level), build / "int8-dynamic", _preset(config))
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


def _truncation_read(model: ModelDir) -> str:
    from .score import resolve_truncation, truncation_label

    return truncation_label(*resolve_truncation(model, ScoreConfig(), model.max_length), window=False)


def _calibration_feeds(model_dir: Path, texts: list[str]) -> list[dict]:
    """One unpadded feed per text (ranges come from real tokens only, never from padding)."""
    from .score import resolve_truncation
    from .tokenize import tokenize

    model = ModelDir.open(model_dir)
    strategy, head = resolve_truncation(model, ScoreConfig(), model.max_length)  # cut as score will cut
    tokens = tokenize(model.tokenizer(), texts, model.max_length, False, True, truncation=strategy, head_tokens=head)
    feeds = []
    for a, b in zip(tokens.offsets[:-1].tolist(), tokens.offsets[1:].tolist()):
        ids = tokens.ids[None, a:b]
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": tokens.types[None, a:b]})
    return feeds


def calibration_texts(texts: list[str], config: ExportConfig) -> list[str]:
    """A seeded sample of the validation texts for calibration (the gates then run on all of them)."""
    if len(texts) <= config.calibration_rows:
        return list(texts)
    chosen = np.sort(np.random.default_rng(1).choice(len(texts), config.calibration_rows, replace=False))
    return [texts[i] for i in chosen]


def _quantize_dynamic(graph: Path, out: Path, preset: str) -> Path:
    """Dynamic int8 with ORTQuantizer (batch-dependent: see the module docstring; never a default). On a fused
    (O2) graph, ORT's MatMul quantizer needs the type of every MatMul output, which plain ONNX shape inference
    cannot see through com.microsoft ops (Attention): "Unable to find data type for weight_name ...". Symbolic
    shape inference fills those types in first."""
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


def _outputs(model_dir: Path, graph: Path | None, texts: list[str], embedding_width: int | None = None):
    """The Result (logits, and embeddings when a width is given) through the same tokenization and batching
    that `score` uses; graph None = PyTorch."""
    from .runtime import CPU, OrtRunner, TorchRunner
    from .score import Scorer

    runner = TorchRunner(model_dir) if graph is None else OrtRunner(graph, CPU)
    return Scorer(model_dir, runner=runner, embeddings="pooled" if embedding_width else None).logits(texts)


def _embedding_agreement(vectors: np.ndarray, reference: np.ndarray) -> dict:
    """Max |Δ| over every embedding value, and the cosine similarity of each row's vector with PyTorch's."""
    if not len(vectors):
        return {"max_abs_embedding_delta": 0.0, "embedding_cosine_min": 1.0, "embedding_cosine_mean": 1.0}
    a, b = vectors.astype(np.float64), reference.astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {"max_abs_embedding_delta": float(np.abs(a - b).max()), "embedding_cosine_min": float(cosine.min()),
            "embedding_cosine_mean": float(cosine.mean())}


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
        "parity": {k: v for k, v in figures.items() if k not in ("passed", "reason", "invariance", "out_of_domain")},
        "out_of_domain": figures.get("out_of_domain"),
        "invariance": figures.get("invariance"),
        # May `score` pick it without being asked? Only CPU graphs whose invariance gate ran and held.
        "batch_invariant": bool(figures.get("invariance", {}).get("passed")),
    }


def graph_line(graph: dict) -> str:
    """One line per graph for consoles: size and parity figures."""
    p = graph["parity"]
    f1 = f", macro-F1 {p['metrics']['macro_f1']:.4f} (drop {p['macro_f1_drop']:+.4f})" if "metrics" in p else ""
    ood, inv = graph.get("out_of_domain"), graph.get("invariance")
    ood = f", out-of-domain agreement {ood['top1_agreement']:.2%}" if ood else ""
    if inv:
        kind = "bitwise" if inv["bitwise"] else f"max |Δprob| {inv['max_abs_prob_delta']:.1e}"
        inv = (f"; batch-invariant ({kind})" if graph["batch_invariant"] else
               f"; NOT batch-invariant ({inv['label_flips']} label flips, max |Δprob| {inv['max_abs_prob_delta']:.1e}"
               " across batchings): never a default")
    vector = (f", embedding max |Δ| {p['max_abs_embedding_delta']:.2e} (cosine >= {p['embedding_cosine_min']:.4f})"
              if "max_abs_embedding_delta" in p else "")
    return (f"{graph['file']}: {graph['size_mb']} MB, max |Δlogit| {p['max_abs_logit_delta']:.2e}, "
            f"top-1 agreement {p['top1_agreement']:.2%}{f1}{vector}{ood}{inv or ''}")
