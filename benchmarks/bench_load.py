"""Does a 1,000,000-row job stay flat in memory and conserve every row?

Builds a tiny seeded BERT (2 layers, hidden 32, the packaged MiniLM tokenizer) and exports its int8 graph,
writes a Parquet table of --rows short texts, then scores it into a directory job in a fresh process and
reports rows/s, peak RSS, and the row/ID check. Appends to benchmarks/results/load.jsonl.

    .venv/bin/python benchmarks/bench_load.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import peak_rss_mb  # noqa: E402


def build_tiny_model(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bertbatch import export_onnx
    from bertbatch.assets import resolve_model

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(path)
    export_onnx(path, min_unlabeled_agreement=0.0)  # random weights: speed and memory only


def make_table(path: Path, rows: int) -> None:
    words = np.array(["great", "awful", "the", "movie", "was", "a", "trip", "food", "love", "never", "again"])
    rng = np.random.default_rng(0)
    chunk = 100_000
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            texts = [" ".join(words[rng.integers(0, len(words), size=k)]) for k in rng.integers(1, 40, size=n)]
            writer.write_table(pa.table({"id": np.arange(start, start + n, dtype=np.int64), "text": texts}))


def child(model: str, data: str, out: str) -> dict:
    from bertbatch import score_file

    start = time.perf_counter()
    summary = score_file(data, out, model, rows_per_part=250_000)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()  # before this harness reads the ids back
    ids = np.concatenate([pq.read_table(p, columns=["id"])["id"].to_numpy() for p in sorted(Path(out).glob("part-*"))])
    return {"rows": summary["rows_written"], "rows_in": summary["rows_in"], "seconds": round(seconds, 1),
            "rows_per_s": round(summary["rows_written"] / seconds, 1), "padding_ratio": summary["padding_ratio"],
            "ids_in_order": bool(np.array_equal(ids, np.arange(len(ids)))), "parts": len(summary["parts"]),
            "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "DATA", "OUT"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_tiny_model(tmp / "tiny")
        make_table(tmp / "big.parquet", args.rows)
        done = subprocess.run([sys.executable, __file__, "--child", str(tmp / "tiny"), str(tmp / "big.parquet"),
                               str(tmp / "out")], capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    from bertbatch.manifest import versions

    record = {"benchmark": "bench_load", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result,
              "versions": versions("onnxruntime", "pyarrow")}
    (HERE / "results").mkdir(exist_ok=True)
    with open(HERE / "results" / "load.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
