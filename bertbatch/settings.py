"""The settings a scorer runs with: explicit options first, then this machine's tune record (tune.py writes it),
else the safe defaults (`ModelDir.default_graph`, `batching.DEFAULT_BUDGET`, all CPUs), with the reason.

A record holds only for the machine it was measured on (machine.machine_signature) and only while the graphs it
timed are the ones on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from .batching import DEFAULT_BUDGET
from .machine import machine_signature, signature_key
from .modeldir import GRAPH_FILES, ModelDir
from .runtime import CUDA


@dataclass(frozen=True)
class Settings:
    """What a scorer runs with, and why: `source` is explicit, tuned or default."""

    graph: str | None  # a GRAPH_FILES key, torch, a path, or None (no graph: PyTorch)
    max_tokens: int
    max_batch_rows: int
    threads: int | None
    source: str
    reason: str


def choose_settings(model: ModelDir, config, provider: str) -> Settings:
    """The graph, budget and threads a scorer runs with: explicit options first, then this machine's tune
    record (when it still matches the graphs on disk), else the safe defaults; with the reason."""
    defaults = DEFAULT_BUDGET["cuda" if provider == CUDA else "cpu"]
    record, why_not = matching_record(model, provider)
    if config.graph:
        graph, source, reason = config.graph, "explicit", f"--graph {config.graph}"
        if record and record["choice"]["graph"] != config.graph:
            record = None
    elif record:
        graph, source = record["choice"]["graph"], "tuned"
        reason = (f"tuned on this machine ({record['signature']['cpu']}, {record['at']}): {graph}, "
                  f"{record['choice']['max_tokens']} tokens/{record['choice']['max_batch_rows']} rows, "
                  f"{record['choice']['threads']} threads")
    else:
        graph, why = model.default_graph(provider)
        source, reason = "default", f"safe defaults ({why_not}): {why}"
    choice = record["choice"] if record else {}
    max_tokens = config.max_tokens or choice.get("max_tokens") or defaults[0]
    max_rows = config.max_batch_rows or choice.get("max_batch_rows") or defaults[1]
    threads = config.threads or choice.get("threads")
    if config.max_tokens or config.max_batch_rows or config.threads:
        reason += "; --max-tokens/--max-batch-rows/--threads as given"
    return Settings(graph, max_tokens, max_rows, threads, source, reason)


def matching_record(model: ModelDir, provider: str) -> tuple[dict | None, str]:
    """This machine's tune record, or None and why there is none (no record, or its graphs changed since)."""
    records = model.manifest.get("tune") or {}
    try:
        key = signature_key(machine_signature(provider))
    except ImportError:
        return None, "onnxruntime missing"
    record = records.get(key)
    if not record or not record.get("choice"):
        return None, f"no tune record for this machine; `bertbatch tune {model.path}` makes one"
    hashes = model.manifest.get("graphs", {})
    if any(hashes.get(k, {}).get("sha256") != h for k, h in record.get("graph_sha256", {}).items()):
        return None, "the tune record timed graphs that have since been re-exported; tune again"
    if not (model.path / GRAPH_FILES.get(record["choice"]["graph"], "")).is_file():
        return None, "the tuned graph is missing"
    return record, "tuned"
