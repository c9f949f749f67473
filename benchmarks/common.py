"""Helpers the benchmark scripts share: input tables, fresh-process runs, machine context, results, tables.

Not a benchmark itself. Scripts import it as `common` (they run as `python benchmarks/NAME.py`, so this
directory is on sys.path).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# BENCH_RESULTS_DIR redirects the JSON lines (e.g. for smoke runs that should not land in the real results).
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or HERE / "results")
PACKAGES = ("onnxruntime", "torch", "transformers", "tokenizers", "pyarrow")


def extract(ref: str, into: Path) -> Path:
    """The bertbatch package as it is at git `ref`, unpacked into `into` (to put first on PYTHONPATH)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "bertbatch"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


# ------------------------------------------------------------------------------------------------ inputs
def repeat_to(items: list, rows: int) -> list:
    """`items` repeated (or cut) to exactly `rows` entries, in order."""
    if not items:
        raise SystemExit("No input rows to repeat.")
    reps = -(-rows // len(items))
    return (list(items) * reps)[:rows]


def sms_texts() -> list[str]:
    from bertbatch.assets import sms_spam_table

    return sms_spam_table()["text"].to_pylist()


def heldout_sms(model_dir: str | Path | None = None) -> tuple[list[str], list[str], str]:
    """SMS Spam (text, label) rows; when `model_dir`'s manifest names its training table and that file exists,
    rows whose text appears in it are left out, so accuracy is measured on texts the model never saw.
    Returns (texts, labels, a note saying which)."""
    from bertbatch.assets import sms_spam_table
    from bertbatch.manifest import read_manifest

    table = sms_spam_table()
    texts, labels = table["text"].to_pylist(), table["label"].to_pylist()
    train = ((read_manifest(model_dir) if model_dir else {}).get("train") or {}).get("data", {}).get("train")
    if not train or not Path(train).exists():
        return texts, labels, "all SMS Spam rows (the model's training table was not found, so they may overlap it)"
    import pyarrow.parquet as pq

    column = (read_manifest(model_dir).get("text_column")) or "text"
    seen = set(pq.read_table(train, columns=[column])[column].to_pylist())
    kept = [(t, l) for t, l in zip(texts, labels) if t not in seen]
    note = f"SMS Spam rows whose text is not in {train} ({len(kept):,} of {len(texts):,})"
    return [t for t, _ in kept], [l for _, l in kept], note


def write_table(path: Path, texts: list[str], **columns) -> None:
    """A Parquet input file: id (0..n-1), text, then any extra columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": np.arange(len(texts), dtype=np.int64), "text": texts, **columns}), path)


def make_input(path: Path, rows: int) -> None:
    """The SMS Spam texts repeated to `rows` rows, as a Parquet file with columns id, text."""
    write_table(path, repeat_to(sms_texts(), rows))


def read_texts(path: str | Path, column: str = "text") -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=[column])[column].to_pylist()


# ------------------------------------------------------------------------------------------ child runs
def run_child(script: str | Path, args: list[str], what: str, env: dict | None = None) -> dict:
    """Run `script --child ARGS` in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(script), "--child", *map(str, args)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_child_arguments(parser) -> None:
    """--child/--data/--out: how a script re-runs itself in a fresh process for one measurement."""
    for name in ("--child", "--data", "--out"):
        parser.add_argument(name)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB.

    Linux: VmHWM from /proc/self/status, the high-water mark of this address space. Not getrusage's
    ru_maxrss, which a child inherits from its parent's RSS at fork time (exec does not reset it), so a
    child spawned by a parent holding torch would report the parent's size as its own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(result: dict) -> None:
    """A child's answer: one JSON line on stdout (the last line; libraries may print before it)."""
    print(json.dumps(result), flush=True)


def median_seconds(fn, runs: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Call `fn` `warmup` times untimed, then `runs` times timed; (median seconds, all timings)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


# ------------------------------------------------------------------------------------------------ context
def cpu_name() -> str:
    from bertbatch.machine import cpu_model

    return cpu_model()


def token_lengths(tokenizer_file: str | Path, texts: list[str], max_length: int) -> np.ndarray:
    """Tokens per text (special tokens included) with truncation at `max_length`, as scoring counts them."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return np.array([len(e.ids) for e in tok.encode_batch(texts)], dtype=np.int64)


def length_stats(lengths) -> dict:
    lengths = np.asarray(lengths)
    return {"mean": round(float(lengths.mean()), 1), "p50": int(np.median(lengths)),
            "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max())}


def context(model: str | Path, texts: list[str], max_length: int = 128, packages=PACKAGES) -> dict:
    """Machine, software and input-length figures every record carries (lengths from the first 5,000 texts)."""
    from bertbatch.manifest import versions
    from bertbatch.runtime import available_cpus

    lengths = token_lengths(Path(model) / "tokenizer.json", texts[:5000], max_length)
    return {
        "cpu": cpu_name(), "cpus": available_cpus(), "python": platform.python_version(),
        "versions": versions(*packages),
        "commit": git_commit(),
        "token_lengths": length_stats(lengths),
    }


def git_commit() -> str | None:
    """The checkout's commit, so a result line can be traced to the code that produced it."""
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                          text=True)
    return done.stdout.strip() or None


def context_line(ctx: dict) -> str:
    t = ctx["token_lengths"]
    return f"{ctx['cpu']}, {ctx['cpus']} CPUs; tokens/row mean {t['mean']}, p50 {t['p50']}, p95 {t['p95']}, max {t['max']}"


def versions_line(ctx: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in ctx["versions"].items())


# ------------------------------------------------------------------------------------------------ accuracy
def label_scores(predicted: list, truth: list, positive: str) -> dict:
    """Accuracy and the positive class's F1 of predicted labels against true labels."""
    p, t = np.asarray(predicted, dtype=object), np.asarray(truth, dtype=object)
    tp = int(np.sum((p == positive) & (t == positive)))
    fp = int(np.sum((p == positive) & (t != positive)))
    fn = int(np.sum((p != positive) & (t == positive)))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"accuracy": round(float(np.mean(p == t)), 5), f"{positive}_f1": round(f1, 5)}


def agreement(a: list, b: list) -> float:
    return round(float(np.mean(np.asarray(a, dtype=object) == np.asarray(b, dtype=object))), 5)


# ------------------------------------------------------------------------------------------------ output
def append_jsonl(name: str, record: dict) -> Path:
    """Append one JSON line to benchmarks/results/NAME.jsonl."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return path


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; cells are written with str() (format numbers before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(value, digits: int = 1) -> str:
    """Thousands separators and fixed decimals; '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"
