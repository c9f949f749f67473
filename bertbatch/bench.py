"""Latency and throughput of a model directory's graphs on this machine: percentiles, rows/s, a plot.

Synthetic mode times batches of exactly batch size x sequence length (random token ids, full attention mask).
With `data`, real texts are tokenized and cut into the length-sorted, per-batch padded batches scoring runs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .batching import GPU_BUCKETS, pad, plan_batches
from .config import BenchConfig
from .errors import InputError, ModelError, require
from .source import read_whole_table
from .machine import cpu_model
from .manifest import versions
from .modeldir import GRAPH_FILES, ModelDir
from .runtime import CUDA, OrtRunner, TorchRunner, available_cpus, resolve_provider

log = logging.getLogger(__name__)

PACKAGES = ("onnxruntime", "onnxruntime-gpu", "torch", "tokenizers", "numpy")


@dataclass
class Case:
    """One measurement's inputs: a single fixed-shape batch (synthetic) or a real length mix (data)."""

    batch_size: int
    seq_length: int | None  # None: real texts, each batch padded to its own length
    batches: list  # (input_ids, attention_mask, token_type_ids)


def benchmark(model_dir: str | Path, config: BenchConfig | None = None, output_dir: str | Path | None = None,
              **overrides) -> list[dict]:
    """One record per graph x batch size x sequence length (x batch size only, with `config.data`); overrides:
    BenchConfig fields.

    `graphs`: fp32 | int8 | fp16 | torch | .onnx paths; None = every ONNX graph present that suits the provider.
    Each record carries latency percentiles (ms per batch), rows/s and the context (hardware, versions, threads).
    """
    config = replace(config or BenchConfig(), **overrides)
    runs, warmup, data = config.runs, config.warmup, config.data
    model = ModelDir.open(model_dir)
    provider = resolve_provider(config.provider)
    keys = select_graphs(model, config.graphs, provider)
    if data is None:
        cases = synthetic_cases(model, config.batch_sizes, config.seq_lengths)
    else:
        cases = data_cases(model, data, config.text_column, config.batch_sizes, provider)
    results = []
    for key in keys:
        runner = make_runner(model, key, provider, config.threads)
        context = run_context(model, key, runner, runs, warmup, data)
        for case in cases:
            results.append({**context, **measure(runner, case, runs, warmup)})
            log.info("%s batch %s length %s: p50 %.2f ms", key, case.batch_size, case.seq_length, results[-1]["p50_ms"])
    add_speedup(results)
    if output_dir is not None:
        write_results(results, output_dir)
    return results


# ------------------------------------------------------------------------------------------------ setup
def _model_config(model: ModelDir) -> dict:
    return model.config


def select_graphs(model: ModelDir, graphs, provider: str) -> list[str]:
    """The graphs asked for, else every ONNX graph present (fp16 only on CUDA: it is a GPU graph; int8-dynamic
    only when asked: it is never a default)."""
    if graphs:
        return list(dict.fromkeys(graphs))
    present = [k for k, f in GRAPH_FILES.items() if (model.path / f).exists() and (k != "fp16" or provider == CUDA)
               and k != "int8-dynamic"]
    if not present:
        raise ModelError(
            f"{model.path} has no ONNX graph for {provider} (expected {model.path / GRAPH_FILES['fp32']}). "
            f"Run `bertbatch export {model.path}` first, or benchmark PyTorch with --graph torch."
        )
    return present


def make_runner(model: ModelDir, key: str, provider: str, threads: int | None):
    if key == "torch":
        return TorchRunner(model.path, threads=threads)
    return OrtRunner(model.graph_path(key, provider), provider, threads)


def synthetic_cases(model: ModelDir, batch_sizes, seq_lengths, seed: int = 0) -> list[Case]:
    """Random token ids from the vocabulary, full attention mask, exactly batch x length."""
    config = _model_config(model)
    limit = int(config.get("max_position_embeddings", 512))
    too_long = [n for n in seq_lengths if n > limit]
    if too_long:
        raise InputError(
            f"--seq-lengths {too_long} exceed the model's {limit} position embeddings; use lengths up to {limit}."
        )
    vocab = int(config.get("vocab_size") or model.tokenizer().get_vocab_size())
    rng = np.random.default_rng(seed)
    cases = []
    for batch in batch_sizes:
        for length in seq_lengths:
            ids = rng.integers(0, vocab, size=(batch, length), dtype=np.int64)
            ones = np.ones_like(ids)
            cases.append(Case(int(batch), int(length), [(ids, ones, np.zeros_like(ids))]))
    return cases


def data_cases(model: ModelDir, data, text_column: str, batch_sizes, provider: str) -> list[Case]:
    """Real texts, tokenized, sorted by length and cut into batches of at most `batch_size` rows, each padded
    to its own (rounded) length, as `Scorer` does."""
    from .config import ScoreConfig
    from .score import resolve_truncation
    from .tokenize import tokenize

    texts = read_texts(data, text_column)
    strategy, head = resolve_truncation(model, ScoreConfig(), model.max_length)  # as the model's Scorer cuts
    tokens = tokenize(model.tokenizer(model.max_length), texts, model.max_length, False, True, truncation=strategy,
                      head_tokens=head)
    bounds = list(zip(tokens.offsets[:-1].tolist(), tokens.offsets[1:].tolist()))
    segments = [tokens.ids[a:b].tolist() for a, b in bounds]
    types = [tokens.types[a:b].tolist() for a, b in bounds]
    buckets = GPU_BUCKETS if provider == CUDA else None
    cases = []
    for batch in batch_sizes:
        plan = plan_batches([len(s) for s in segments], int(batch) * model.max_length, int(batch), model.max_length,
                            buckets=buckets)
        padded = [(*pad([segments[i] for i in b.rows], b.length), pad([types[i] for i in b.rows], b.length)[0])
                  for b in plan]
        cases.append(Case(int(batch), None, padded))
    return cases


def read_texts(data, text_column: str) -> list[str]:
    """The non-empty texts of a CSV/Parquet file or directory (empty and null ones are skipped)."""
    table = read_whole_table(data)
    if text_column not in table.column_names:
        raise InputError(
            f"Column '{text_column}' not found in {data}; columns are {table.column_names}. Use --text-column NAME."
        )
    texts = [t for t in table[text_column].to_pylist() if isinstance(t, str) and t.strip()]
    if not texts:
        raise InputError(f"{data} has no non-empty text in column '{text_column}'; nothing to benchmark.")
    return texts


# ------------------------------------------------------------------------------------------------ measuring
def measure(runner, case: Case, runs: int, warmup: int) -> dict:
    """Warm up, then time `runs` batches (with real data: at least one full pass over its batches)."""
    batches = case.batches
    for i in range(warmup):
        runner.run(*batches[i % len(batches)])
    count = max(runs, len(batches))
    seconds = np.empty(count)
    rows = real = padded = 0
    for i in range(count):
        ids, mask, types = batches[i % len(batches)]
        start = time.perf_counter()
        runner.run(ids, mask, types)
        seconds[i] = time.perf_counter() - start
        rows, real, padded = rows + len(ids), real + int(mask.sum()), padded + mask.size
    total = float(seconds.sum())
    p50, p95, p99 = np.percentile(seconds * 1000, [50, 95, 99])
    return {
        "batch_size": case.batch_size,
        "seq_length": case.seq_length,
        "timed_batches": count,
        "p50_ms": round(float(p50), 4),
        "p95_ms": round(float(p95), 4),
        "p99_ms": round(float(p99), 4),
        "mean_ms": round(1000 * total / count, 4),
        "rows_per_s": round(rows / total, 2),
        "tokens_per_s": round(real / total, 1),
        "mean_padded_length": round(padded / rows, 2),
        "padding_ratio": round(real / padded, 4),
    }


def add_speedup(results: list[dict]) -> None:
    """rows/s as a ratio to the first graph's at the same batch size and length (the run's baseline)."""
    if not results:
        return
    baseline = results[0]["graph"]
    base = {(r["batch_size"], r["seq_length"]): r["rows_per_s"] for r in results if r["graph"] == baseline}
    for r in results:
        r["baseline_graph"] = baseline
        r["speedup"] = round(r["rows_per_s"] / base[(r["batch_size"], r["seq_length"])], 3)


def run_context(model: ModelDir, key: str, runner, runs: int, warmup: int, data) -> dict:
    """The fields every record of one graph shares: what ran, where, with which software."""
    return {
        "model": str(model.path),
        "model_name": model.name,
        "graph": key,
        "graph_file": runner.graph or "torch",  # a runner that runs no graph file (Runner protocol)
        "provider": runner.provider,
        "threads": getattr(runner, "threads", None),
        "mode": "synthetic" if data is None else "data",
        "data": None if data is None else str(data),
        "runs": runs,
        "warmup": warmup,
        **hardware(),
        "versions": versions(*PACKAGES),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def hardware() -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "available_cpus": available_cpus(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------------ reports
def summary_markdown(results: list[dict]) -> str:
    """The console table: context line, then one row per measurement."""
    if not results:
        return "No measurements.\n"
    first = results[0]
    runtime = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    inputs = ("synthetic inputs (random token ids, full attention mask)" if first["mode"] == "synthetic"
              else f"texts from {first['data']} (length column: mean padded length)")
    lines = [
        f"# Benchmark of {first['model_name']}",
        "",
        f"{first['cpu_model']} ({first['cpu_cores']} cores, {first['available_cpus']} available to this process); "
        f"{first['provider']}, {first['threads']} threads; {runtime}.",
        f"{inputs}; {first['runs']} timed runs after {first['warmup']} warm-up; latency per batch.",
        "",
        "| graph | batch | length | p50 ms | p95 ms | p99 ms | rows/s | vs " + first["baseline_graph"] + " |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        length = r["seq_length"] if r["seq_length"] is not None else f"~{r['mean_padded_length']:.0f}"
        lines.append(f"| {r['graph']} | {r['batch_size']} | {length} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['rows_per_s']:,.1f} | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def write_results(results: list[dict], output_dir: str | Path) -> dict[str, Path]:
    """results.jsonl (one record per measurement), summary.md and latency.png in `output_dir`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.jsonl", "summary": out / "summary.md", "plot": out / "latency.png"}
    with open(files["results"], "w") as fh:
        for record in results:
            fh.write(json.dumps(record) + "\n")
    files["summary"].write_text(summary_markdown(results))
    plot_latency(results, files["plot"])
    return files


def plot_latency(results: list[dict], path: Path) -> Path:
    """p50 latency vs sequence length, one line per graph and batch size (vs batch size, one line per graph,
    for real-data runs, whose lengths are a mix)."""
    require("matplotlib", "eval")
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    synthetic = results[0]["seq_length"] is not None
    lines: dict[tuple[str, int | None], list[tuple[int, float]]] = {}
    for r in results:
        name = (r["graph"], r["batch_size"] if synthetic else None)
        lines.setdefault(name, []).append((r["seq_length"] if synthetic else r["batch_size"], r["p50_ms"]))
    graphs = list(dict.fromkeys(r["graph"] for r in results))
    batches = list(dict.fromkeys(r["batch_size"] for r in results))
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for (graph, batch), points in lines.items():  # colour per graph, line style per batch size
        xs, ys = zip(*sorted(points))
        style = ("-", "--", ":", "-.")[batches.index(batch) % 4] if synthetic else "-"
        ax.plot(xs, ys, marker="o", linestyle=style, color=f"C{graphs.index(graph) % 10}",
                label=f"{graph} batch {batch}" if synthetic else graph)
    ax.set_xlabel("sequence length (tokens)" if synthetic else "batch size (rows)")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{results[0]['model_name']}: {results[0]['provider']}, {results[0]['threads']} threads")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
