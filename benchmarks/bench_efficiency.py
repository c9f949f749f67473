"""How close to the machine's limit does scoring get?

1. The machine's fp32 matrix-multiply peak: a square float32 GEMM (--gemm-n, default 2048) timed with numpy
   (its BLAS, threads capped at the CPUs this process may use) and with onnxruntime's own MatMul
   (intra-op threads = those CPUs), median of --gemm-runs after a warm-up; FLOP/s = 2n^3 / t. The higher
   of the two medians is the peak (the best single run is reported too).
2. Scoring: --rows SMS Spam texts (repeated/cut) through bertbatch.Scorer(...).logits, fp32 and int8 graphs,
   for --model (default models/sms-spam) and for a random-initialised BERT-base (BertConfig() defaults,
   110M parameters, seed 0, the MiniLM tokenizer, exported with bertbatch.export_onnx; speed only, its
   labels mean nothing; --base-rows texts; --skip-base skips it). Texts are scored in windows of 4,096
   rows as `score` does, after a warm-up on 64 rows; median of --runs.
   useful FLOPs = 2 x non-embedding parameters x real tokens + 4 x layers x hidden x sum(real length^2)
   (dense layers per real token, plus QK^T and attention x V on real lengths; padding, softmax, layer norms
   and the embedding lookup are not counted). Non-embedding parameters are counted from model.safetensors
   (every tensor whose name does not contain "embeddings"; the pooler and classifier, which run once per row,
   are counted per token: under 1.5% of the total for MiniLM-L6, under 1% for BERT-base).
Every measurement runs in a fresh process. Prints Markdown tables and appends a JSON line to
benchmarks/results/efficiency.jsonl.

    .venv/bin/python benchmarks/bench_efficiency.py [--model models/sms-spam] [--rows 1000] [--base-rows 256]
        [--runs 3] [--gemm-n 4096] [--skip-base]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    append_jsonl,
    context,
    context_line,
    emit,
    markdown_table,
    median_seconds,
    num,
    peak_rss_mb,
    repeat_to,
    run_child,
    sms_texts,
    versions_line,
)

BASE_LABEL = "BERT-base random init (speed only)"
WARMUP_ROWS = 64
PACKAGES = ("onnxruntime", "numpy", "tokenizers", "torch", "transformers", "optimum-onnx")


# ------------------------------------------------------------------------------------------------- child
def child_gemm(n: int, runs: int) -> dict:
    import onnxruntime as ort
    from threadpoolctl import threadpool_info, threadpool_limits

    from bertbatch.runtime import available_cpus

    cpus = available_cpus()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n ** 3
    with threadpool_limits(cpus):
        blas = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                for i in threadpool_info() if i.get("user_api") == "blas"]
        np_seconds, np_times = median_seconds(lambda: a @ b, runs, warmup=1)

    session = ort.InferenceSession(_matmul_graph(n), sess_options=_ort_options(ort, cpus),
                                   providers=["CPUExecutionProvider"])
    feeds = {"A": a, "B": b}
    ort_seconds, ort_times = median_seconds(lambda: session.run(None, feeds), runs, warmup=1)
    return {"n": n, "runs": runs, "threads": cpus, "blas": blas,
            "numpy_gflops": round(flop / np_seconds / 1e9, 1), "numpy_best_gflops": round(flop / min(np_times) / 1e9, 1),
            "numpy_seconds": [round(t, 4) for t in np_times],
            "ort_gflops": round(flop / ort_seconds / 1e9, 1), "ort_best_gflops": round(flop / min(ort_times) / 1e9, 1),
            "ort_seconds": [round(t, 4) for t in ort_times],
            "peak_rss_mb": peak_rss_mb()}


def _ort_options(ort, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def _matmul_graph(n: int) -> bytes:
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in ("A", "B", "Y")]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "gemm", io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for any onnxruntime this project supports
    return model.SerializeToString()


def child_build_base(directory: str) -> dict:
    """A BERT-base-sized classifier with random weights, saved with the MiniLM tokenizer, exported to ONNX."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bertbatch import export_onnx
    from bertbatch.assets import resolve_model

    torch.manual_seed(0)
    labels = {0: "class_0", 1: "class_1"}  # named: transformers leaves its default LABEL_i names out of config.json
    config = BertConfig(num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()},
                        problem_type="single_label_classification")
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(directory)
    start = time.perf_counter()
    section = export_onnx(directory, min_unlabeled_agreement=0.0)
    return {"parameters": sum(p.numel() for p in model.parameters()), "export_seconds": round(time.perf_counter() - start, 1),
            "graphs": {k: {"size_mb": v["size_mb"], "fusions": v["fusions"]} for k, v in section["graphs"].items()}}


def child_score(model: str, graph: str, rows: int, runs: int, max_length: int) -> dict:
    from bertbatch import Scorer

    texts = repeat_to(sms_texts(), rows)
    scorer = Scorer(model, graph=graph, max_length=max_length)
    window = scorer.config.window_rows
    totals = {}

    def score_all():
        real = padded = 0
        for start in range(0, len(texts), window):
            result = scorer.logits(texts[start:start + window])
            real, padded = real + result.real_tokens, padded + result.padded_tokens
        totals.update(real=real, padded=padded)

    scorer.logits(texts[:WARMUP_ROWS])
    seconds, times = median_seconds(score_all, runs, warmup=0)
    lengths = np.array([len(e.ids) for e in scorer.tokenizer.encode_batch(texts)], dtype=np.int64)
    if int(lengths.sum()) != totals["real"]:
        raise SystemExit(f"token count mismatch: {lengths.sum()} tokenized, {totals['real']} scored")
    return {"graph": graph, "rows": rows, "runs": runs, "seconds": round(seconds, 3), "times": [round(t, 3) for t in times],
            "real_tokens": totals["real"], "padded_tokens": totals["padded"], "sum_len_sq": int((lengths ** 2).sum()),
            "threads": getattr(scorer.runner, "threads", None), "provider": scorer.runner.provider,
            "max_length": scorer.max_length, "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------------------------- parent
def architecture(model_dir: Path) -> dict:
    """Layers, hidden size and parameter counts (all / non-embedding) read from config.json and safetensors."""
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    total = non_embedding = 0
    with safe_open(str(model_dir / "model.safetensors"), "np") as fh:
        for name in fh.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            count = int(np.prod(fh.get_slice(name).get_shape()))
            total += count
            if "embeddings" not in name:
                non_embedding += count
    return {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"], "parameters": total,
            "non_embedding_parameters": non_embedding}


def useful_flops(arch: dict, run: dict) -> float:
    dense = 2.0 * arch["non_embedding_parameters"] * run["real_tokens"]
    attention = 4.0 * arch["layers"] * arch["hidden"] * run["sum_len_sq"]
    return dense + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sms-spam")
    parser.add_argument("--rows", type=int, default=1000, help="SMS texts scored with --model")
    parser.add_argument("--base-rows", type=int, default=256, help="SMS texts scored with the BERT-base model")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per graph; the median is kept")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--gemm-n", type=int, default=4096)
    parser.add_argument("--gemm-runs", type=int, default=5)
    parser.add_argument("--skip-base", action="store_true", help=f"do not build and score the {BASE_LABEL}")
    parser.add_argument("--child")
    parser.add_argument("--graph")
    parser.add_argument("--dir")
    args = parser.parse_args()
    if args.child == "gemm":
        return emit(child_gemm(args.gemm_n, args.gemm_runs))
    if args.child == "build-base":
        return emit(child_build_base(args.dir))
    if args.child == "score":
        return emit(child_score(args.model, args.graph, args.rows, args.runs, args.max_length))
    for graph in ("model.onnx", "model_int8.onnx"):
        if not (Path(args.model) / "onnx" / graph).exists():
            raise SystemExit(f"{args.model}/onnx/{graph} is missing: run `make demo` (or bertbatch train + export) first.")

    ctx = context(args.model, repeat_to(sms_texts(), max(args.rows, args.base_rows)), args.max_length, PACKAGES)
    gemm = run_child(__file__, ["gemm", "--gemm-n", args.gemm_n, "--gemm-runs", args.gemm_runs], "GEMM peak")
    peak = max(gemm["numpy_gflops"], gemm["ort_gflops"]) * 1e9
    models = [(Path(args.model).name, Path(args.model), args.rows)]
    with tempfile.TemporaryDirectory(prefix="bench-efficiency-") as tmp:
        base_build = None
        if not args.skip_base:
            base_dir = Path(tmp) / "bert-base-random"
            base_build = run_child(__file__, ["build-base", "--dir", base_dir], f"{BASE_LABEL}: build and export")
            models.append((BASE_LABEL, base_dir, args.base_rows))
        results = []
        for label, directory, rows in models:
            arch = architecture(directory)
            for graph in ("fp32", "int8"):
                run = run_child(__file__, ["score", "--model", directory, "--graph", graph, "--rows", rows,
                                           "--runs", args.runs, "--max-length", args.max_length], f"{label} {graph}")
                flops = useful_flops(arch, run)
                run.update(model=label, **arch, useful_gflop=round(flops / 1e9, 2),
                           rows_per_s=round(rows / run["seconds"], 1),
                           tokens_per_s=round(run["real_tokens"] / run["seconds"], 1),
                           padding_efficiency=round(run["real_tokens"] / run["padded_tokens"], 4),
                           useful_gflops=round(flops / run["seconds"] / 1e9, 2),
                           pct_of_fp32_peak=round(100 * flops / run["seconds"] / peak, 1))
                results.append(run)

    record = {"benchmark": "bench_efficiency", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": args.model,
              "rows": args.rows, "base_rows": None if args.skip_base else args.base_rows, "runs": args.runs,
              **ctx, "gemm": gemm, "peak_gflops": round(peak / 1e9, 1), "base_build": base_build, "results": results}
    append_jsonl("efficiency", record)

    print(f"{context_line(ctx)} (SMS texts, truncated at {args.max_length})")
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in gemm["blas"]) or "?"
    print(f"{versions_line(ctx)}; numpy BLAS: {blas}\n")
    print(markdown_table(
        [f"fp32 GEMM {gemm['n']}×{gemm['n']}", f"GFLOP/s (median of {gemm['runs']})", "best run", "threads"],
        [["numpy matmul", num(gemm["numpy_gflops"]), num(gemm["numpy_best_gflops"]), gemm["threads"]],
         ["onnxruntime MatMul", num(gemm["ort_gflops"]), num(gemm["ort_best_gflops"]), gemm["threads"]],
         ["**peak** (higher median)", f"**{num(peak / 1e9)}**", "", ""]]))
    print()
    print(markdown_table(
        ["model", "graph", "params (non-emb.)", "rows", "rows/s", "tokens/s", "padding eff.", "useful GFLOP/s",
         "% of fp32 peak", "× fp32"],
        [[r["model"], r["graph"], f"{r['parameters'] / 1e6:.1f}M ({r['non_embedding_parameters'] / 1e6:.1f}M)",
          f"{r['rows']:,}", num(r["rows_per_s"]), num(r["tokens_per_s"], 0), f"{r['padding_efficiency']:.3f}",
          num(r["useful_gflops"]), f"{r['pct_of_fp32_peak']:.1f}%",
          f"{r['rows_per_s'] / next(x['rows_per_s'] for x in results if x['model'] == r['model'] and x['graph'] == 'fp32'):.2f}"]
         for r in results]))
    print(f"\nScorer.logits (tokenize + batch + run), {results[0]['threads']} threads, {results[0]['provider']}; "
          f"median of {args.runs} after a {WARMUP_ROWS}-row warm-up. Useful FLOPs count real tokens only (padding is "
          "waste); int8 is counted with the same FLOPs and compared with the fp32 peak, so it can pass 100%.")


if __name__ == "__main__":
    main()
