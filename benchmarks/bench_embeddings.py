"""What does `score --embeddings` cost? Rows/s with and without it, and output bytes per row.

Scores SMS Spam texts (repeated to --rows) with one exported model, in one process, alternating rounds
without / with embeddings (the same graph, budget and threads), so both see the same machine load. Reports
the median rows/s of each, their ratio, and the output file size per row in Parquet and JSONL. Appends one
JSON line to benchmarks/results/embeddings.jsonl.

    .venv/bin/python benchmarks/bench_embeddings.py MODEL_DIR [--rows 5000] [--rounds 3] [--graph int8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import append_jsonl, context, make_input, read_texts


def cpu_flags() -> list[str]:
    """The ISA flags that matter to ONNX Runtime's kernels, as /proc/cpuinfo lists them."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")
    try:
        line = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        return []
    flags = set(line.split(":", 1)[1].split())
    return [f for f in wanted if f in flags]


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--graph", default="int8")
    args = parser.parse_args()

    from bertbatch import score_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "in.parquet"
        make_input(data, args.rows)
        texts = read_texts(data)

        def run(embeddings: bool, fmt: str = "parquet") -> tuple[float, int]:
            out = tmp / f"out-{embeddings}.{fmt}"
            start = time.perf_counter()
            summary = score_file(data, out, args.model, graph=args.graph, provider="cpu", overwrite=True,
                                 embeddings="pooled" if embeddings else None)
            seconds = time.perf_counter() - start
            return summary["rows_written"] / seconds, out.stat().st_size

        run(False), run(True)  # warm-up: sessions, caches
        speeds = {False: [], True: []}
        loads = [load_average()]
        for _ in range(args.rounds):
            for embeddings in (False, True):
                speeds[embeddings].append(run(embeddings)[0])
            loads.append(load_average())
        sizes = {(e, fmt): run(e, fmt)[1] / args.rows for e in (False, True) for fmt in ("parquet", "jsonl")}

    without, with_vectors = statistics.median(speeds[False]), statistics.median(speeds[True])
    record = {
        "benchmark": "embeddings", "model": str(args.model), "graph": args.graph, "rows": args.rows,
        "rounds": args.rounds, "rows_per_s": {"without": round(without, 1), "with": round(with_vectors, 1)},
        "ratio_with_over_without": round(with_vectors / without, 4),
        "rounds_rows_per_s": {"without": [round(s, 1) for s in speeds[False]],
                              "with": [round(s, 1) for s in speeds[True]]},
        "bytes_per_row": {f"{fmt}_{'with' if e else 'without'}": round(size, 1) for (e, fmt), size in sizes.items()},
        "cpu_flags": cpu_flags(), "load_average": loads,
        **context(args.model, texts),
    }
    append_jsonl("embeddings", record)
    print(f"{args.graph}: {without:,.0f} rows/s without, {with_vectors:,.0f} with embeddings "
          f"({with_vectors / without:.3f}x); bytes/row " +
          ", ".join(f"{k} {v}" for k, v in record["bytes_per_row"].items()))


if __name__ == "__main__":
    main()
