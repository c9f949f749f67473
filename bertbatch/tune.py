"""Per-machine settings: measure candidate graphs x batch budgets x threads here and record the fastest that
passes the gates in bertbatch.json under this machine's signature (machine.py). settings.py chooses a scorer's
settings from that record; this module only measures and records.

A record holds only for the machine it was measured on: the signature is the CPU model, its ISA flags that
change kernels, the CPUs this process may use, the execution provider and the onnxruntime version. No record
for this machine means the safe defaults (`ModelDir.default_graph`, `batching.DEFAULT_BUDGET`, all CPUs),
which are tuned to no CPU. Every candidate graph keeps the batch-invariance contract, so a record changes speed,
never which batching a row's result depends on; it can change the graph (int8 vs fp32), which the output's
metadata names: pin --graph when results must match across machines with different records.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from .batching import DEFAULT_BUDGET
from .config import TuneConfig
from .errors import InputError
from .gates import BUILTIN_SAMPLE, invariance_at
from .machine import BF16_FLAGS, machine_signature, signature_key
from .manifest import read_manifest, update_manifest
from .modeldir import GRAPH_FILES, ModelDir
from .runtime import CUDA, resolve_provider

log = logging.getLogger(__name__)

# (max_tokens, max_batch_rows) candidates. GPU ones are larger: a GPU needs big batches to fill.
CPU_BUDGETS = ((256, 8), (512, 16), (1024, 32), (2048, 64), (4096, 128))
CUDA_BUDGETS = ((8192, 128), (16384, 256), (32768, 512), (65536, 1024))


# -------------------------------------------------------------------------------------------- candidates
def candidate_graphs(present: set[str], invariant: set[str], provider: str, isa: set[str]) -> tuple[list[str], dict]:
    """Graphs tune may time and record, and why each other one is left out. CPU: fp32 and int8 when they passed
    the batch-invariance gate; bf16 only on a CPU with AMX or AVX512-BF16 (and a bf16 graph). CUDA: fp16, fp32.
    Dynamic int8 never: its results depend on the batch."""
    skipped = {}
    if provider == CUDA:
        wanted = ["fp16", "fp32"]
    else:
        wanted = ["fp32", "int8"] + (["bf16"] if isa & set(BF16_FLAGS) else [])
        if "bf16" not in wanted:
            skipped["bf16"] = "this CPU has neither AMX nor AVX512-BF16"
    chosen = []
    for key in wanted:
        if key not in present:
            skipped[key] = "no graph in onnx/ (see `bertbatch export`)"
        elif provider != CUDA and key not in invariant:
            skipped[key] = "did not pass (or predates) the export's batch-invariance gate"
        else:
            chosen.append(key)
    if "int8-dynamic" in present:
        skipped["int8-dynamic"] = "batch-dependent (dynamic activation scales): never a default"
    return chosen, skipped


def thread_candidates(cpus: int) -> list[int]:
    """All CPUs, half, and 1: enough to see whether more threads pay for their synchronisation."""
    return sorted({cpus, max(1, cpus // 2), 1}, reverse=True)


# --------------------------------------------------------------------------------------------------- tune
def tune(model_dir: str | Path, config: TuneConfig | None = None, texts: list[str] | None = None, progress=None,
         **overrides) -> dict:
    """Time candidate graphs x budgets x threads on validation texts; record and return the fastest that
    passes the gates (overrides: TuneConfig fields). `seconds` bounds the measuring (the safe default and each
    graph's first point always run, and a winner other than the default is confirmed against it in two
    alternating rounds). `progress(line)` receives one line per measurement."""
    from .runtime import OrtRunner

    config = replace(config or TuneConfig(), **overrides)
    seconds, rows, graphs = config.seconds, config.rows, config.graphs
    model = ModelDir.open(model_dir)
    provider = resolve_provider(config.provider)
    signature = machine_signature(provider)
    present = {k for k, f in GRAPH_FILES.items() if (model.path / f).exists()}
    invariant = {k for k in present if model.batch_invariant(k)}
    keys, skipped = candidate_graphs(present, invariant, provider, set(signature["isa"]))
    if graphs:
        keys = [k for k in keys if k in graphs]
    if not keys:
        raise InputError(f"{model.path}: no graph to tune for {provider} ({skipped}). Run `bertbatch export` first.")
    texts = list(texts) if texts is not None else tune_texts(model, rows)
    default_key, _ = model.default_graph(provider)
    budgets = CUDA_BUDGETS if provider == CUDA else CPU_BUDGETS
    default_budget = DEFAULT_BUDGET["cuda" if provider == CUDA else "cpu"]
    threads = thread_candidates(signature["cpus"])
    started = time.monotonic()
    deadline = started + seconds
    measured: list[dict] = []

    def measure(key: str, budget: tuple[int, int], n_threads: int, runner_cache: dict) -> dict:
        if (key, n_threads) not in runner_cache:
            runner_cache[(key, n_threads)] = OrtRunner(model.path / GRAPH_FILES[key], provider, n_threads)
        point = {"graph": key, "max_tokens": budget[0], "max_batch_rows": budget[1], "threads": n_threads,
                 "rows_per_s": time_rows_per_s(model.path, runner_cache[(key, n_threads)], texts, budget)}
        measured.append(point)
        if progress:
            progress(f"{key} {budget[0]} tokens/{budget[1]} rows, {n_threads} threads: {point['rows_per_s']:,.0f} rows/s")
        return point

    # 1. every graph at the default budget with all CPUs (the safe default among them), 2. budgets for each
    # graph, 3. threads for the best (graph, budget). Each step stops at the deadline.
    runners: dict = {}
    for key in sorted(keys, key=lambda k: k != default_key):
        measure(key, default_budget, threads[0], runners)
    for key in keys:
        for budget in budgets:
            if time.monotonic() > deadline:
                break
            if budget != default_budget:
                measure(key, budget, threads[0], runners)
    best = max(measured, key=lambda p: p["rows_per_s"])
    for n_threads in threads[1:]:
        if time.monotonic() > deadline:
            break
        measure(best["graph"], (best["max_tokens"], best["max_batch_rows"]), n_threads, runners)
    best = max(measured, key=lambda p: p["rows_per_s"])
    default = next(p for p in measured if p["graph"] == default_key and p["max_tokens"] == default_budget[0]
                   and p["threads"] == threads[0]) if default_key in keys else None
    if default is not None and best is not default:
        # Confirm against the default in alternating rounds: on a shared machine a single lucky measurement
        # must not become the record. The winner must beat the default in both rounds.
        wins = 0
        for _ in range(2):
            d = measure(default["graph"], (default["max_tokens"], default["max_batch_rows"]), default["threads"], runners)
            b = measure(best["graph"], (best["max_tokens"], best["max_batch_rows"]), best["threads"], runners)
            wins += b["rows_per_s"] > d["rows_per_s"]
        measured[-4:] = [{**p, "confirm": True} for p in measured[-4:]]
        best = best if wins == 2 else default
    runners.clear()
    gate = invariance_at(model.path, model.path / GRAPH_FILES[best["graph"]], provider, texts[:64], best)
    record = {
        "signature": signature,
        "choice": best if gate["passed"] else default,
        "gate": gate,
        "default": default,
        "speedup_vs_default": round(best["rows_per_s"] / default["rows_per_s"], 3) if default else None,  # 1st pass
        "measured": measured,
        "skipped": skipped,
        "rows": len(texts),
        "seconds": round(time.monotonic() - started, 1),
        "graph_sha256": {k: model.manifest.get("graphs", {}).get(k, {}).get("sha256") for k in keys},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tuned = dict(read_manifest(model.path).get("tune") or {})
    tuned[signature_key(signature)] = record
    update_manifest(model.path, tune=tuned)
    return record


def tune_texts(model: ModelDir, rows: int) -> list[str]:
    """The validation texts export used (the held-out split), else the built-in sample, up to `rows`."""
    from .train import TEST_SPLIT_FILE

    split = model.path / TEST_SPLIT_FILE
    if split.exists():
        import pyarrow.parquet as pq

        texts = [t for t in pq.read_table(split, columns=["text"])["text"].to_pylist() if t]
    else:
        texts = list(BUILTIN_SAMPLE)
    return (texts * (-(-rows // len(texts))))[:rows] if len(texts) < rows else texts[:rows]


def time_rows_per_s(model_dir: Path, runner, texts: list[str], budget: tuple[int, int]) -> float:
    """Rows/s of scoring `texts` (tokenize, batch, run) at a budget: best of 3 after one warm-up."""
    from .score import Scorer

    scorer = Scorer(model_dir, runner=runner, max_tokens=budget[0], max_batch_rows=budget[1])
    scorer.logits(texts[: max(1, len(texts) // 4)])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        scorer.logits(texts)
        best = min(best, time.perf_counter() - start)
    return round(len(texts) / best, 1)


def record_line(record: dict) -> str:
    """One console line for a tune record."""
    c, d = record["choice"], record["default"]
    vs = f" ({record['speedup_vs_default']:.2f}x the safe default, {d['rows_per_s']:,.0f} rows/s)" if d else ""
    return (f"Tuned for {record['signature']['cpu']} ({', '.join(record['signature']['isa'])}; "
            f"{record['signature']['cpus']} CPUs, {record['signature']['provider']}): {c['graph']}, "
            f"{c['max_tokens']} tokens/{c['max_batch_rows']} rows, {c['threads']} threads: "
            f"{c['rows_per_s']:,.0f} rows/s{vs}; {len(record['measured'])} points in {record['seconds']}s")
