"""Batch invariance vs speed: the new default CPU graph (static int8) vs today's dynamic int8 vs fp32, same run.

On the fine-tuned MiniLM SMS model (`make demo`; re-export it with --int8-dynamic so the dynamic graph exists):
  speed     rows/s of `score_file` end to end on SMS texts repeated to --rows, each graph in a fresh process at
            the CPU default budget (1024 tokens/32 rows), and × a transformers pipeline loop (the baseline);
  accuracy  on held-out SMS rows (texts not in the training table), top-1 agreement with fp32;
  flips     labels that change between two batchings (1024 tokens/32 rows in order vs 256 tokens/8 rows,
            shuffled) on held-out SMS and on out-of-domain movie-review sentences, and max |Δprob|;
  tune      `score` with no tune record (safe defaults) vs with this machine's record (`bertbatch tune`);
  variants  (--variants) static int8 choices measured: 7-bit vs 8-bit weights, attention products
            in fp32 or int8, integer MatMul chains fused or not.
Prints Markdown tables and appends one JSON line to benchmarks/results/invariance.jsonl.

    .venv/bin/python benchmarks/bench_invariance.py [--model models/sms-spam] [--rows 4000] [--variants]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    add_child_arguments,
    append_jsonl,
    context,
    emit,
    heldout_sms,
    make_input,
    markdown_table,
    read_texts,
    run_child,
)

GRAPHS = ("int8", "int8-dynamic", "fp32")  # new default, today's default, the reference
BUDGET_A, BUDGET_B = (1024, 32), (256, 8)


def child(mode: str, model: str, data: str, out: str) -> dict:
    """One end-to-end timing in this fresh process: the pipeline baseline, a graph, or `default` (no --graph,
    no budget: what `score` picks from the tune record or the safe defaults)."""
    if mode == "pipeline":
        from transformers import pipeline

        texts = read_texts(data)
        clf = pipeline("text-classification", model=model, device="cpu", truncation=True)
        clf(texts[:64], batch_size=32)
        start = time.perf_counter()
        clf(texts, batch_size=32)
        seconds = time.perf_counter() - start
        return {"mode": mode, "rows": len(texts), "rows_per_s": round(len(texts) / seconds, 1)}
    from bertbatch import Scorer, score_file

    options = {} if mode == "default" else {"graph": mode, "max_tokens": BUDGET_A[0], "max_batch_rows": BUDGET_A[1]}
    reason = Scorer(model, provider="cpu", **options).settings_reason
    score_file(data, out, model, overwrite=True, provider="cpu", **options)  # warm-up (page cache, first session)
    start = time.perf_counter()
    summary = score_file(data, out, model, overwrite=True, provider="cpu", **options)
    seconds = time.perf_counter() - start
    return {"mode": mode, "rows": summary["rows_written"], "rows_per_s": round(summary["rows_written"] / seconds, 1),
            "graph": summary["graph"], "threads": summary["threads"], "settings": reason}


def outputs(model: str, graph: str | Path, texts: list[str], budget, order=None):
    """Probabilities in input order, scored in `order` at `budget`."""
    from bertbatch import Scorer
    from bertbatch.runtime import CPU, OrtRunner

    runner = OrtRunner(Path(model) / "onnx" / graph if isinstance(graph, str) else graph, CPU)
    order = np.arange(len(texts)) if order is None else order
    probs = Scorer(model, runner=runner, max_tokens=budget[0], max_batch_rows=budget[1]).logits(
        [texts[i] for i in order]).probs
    out = np.empty_like(probs)
    out[order] = probs
    return out


def quality(model: str, graph, sms: list[str], truth: list[str], ood: list[str], fp32: dict | None) -> dict:
    """Accuracy, agreement with fp32 and flips across two batchings, on held-out SMS and out-of-domain text."""
    from bertbatch.modeldir import ModelDir

    labels = np.array(ModelDir.open(model).labels, dtype=object)
    figures = {}
    for name, texts in (("sms", sms), ("ood", ood)):
        a = outputs(model, graph, texts, BUDGET_A)
        b = outputs(model, graph, texts, BUDGET_B, np.random.default_rng(0).permutation(len(texts)))
        figures[name] = {"probs": a, "flips": int(np.sum(a.argmax(1) != b.argmax(1))),
                         "max_abs_prob_delta": float(np.abs(a - b).max()), "bitwise": bool(np.array_equal(a, b))}
        if fp32:
            figures[name]["agreement_with_fp32"] = round(float(np.mean(a.argmax(1) == fp32[name]["probs"].argmax(1))), 5)
    figures["sms"]["accuracy"] = round(float(np.mean(labels[figures["sms"]["probs"].argmax(1)] == np.array(truth))), 5)
    return figures


def rows_per_s(model: str, graph, texts: list[str]) -> float:
    """In-process scoring speed (tokenize + batch + run) at the default budget: best of 3 after a warm-up."""
    from bertbatch.runtime import CPU, OrtRunner
    from bertbatch.tune import time_rows_per_s

    return time_rows_per_s(Path(model), OrtRunner(graph, CPU), texts, BUDGET_A)


def fused_fp32(model: Path, tmp: Path) -> Path:
    """The fused (O2) fp32 graph that export builds static int8 from, rebuilt here from the checkpoint."""
    from bertbatch.config import ExportConfig
    from bertbatch.export import _build_graphs

    build = tmp / "build"
    build.mkdir()
    _build_graphs(model, build, ExportConfig(quantize=None, int8_dynamic=True), [])
    return build / "O2" / "model_optimized.onnx"


def static_variants(model: Path, tmp: Path) -> dict[str, Path]:
    """Static int8 choices, each built here from the fused fp32 graph and export's calibration texts:
    8-bit instead of 7-bit weights, the trimmed last layer's attention products quantized too, and the integer
    MatMul chains left for ORT (unfused)."""
    import onnx

    from bertbatch import quantize
    from bertbatch.config import ExportConfig
    from bertbatch.export import _calibration_feeds, _validation_set, calibration_texts
    from bertbatch.modeldir import ModelDir

    texts, _ = _validation_set(ModelDir.open(model), ExportConfig())
    feeds = _calibration_feeds(model, calibration_texts(texts, ExportConfig()))
    fused = fused_fp32(model, tmp)
    unfused = quantize._integer_ops(fused, tmp / "unfused.onnx", True)
    chain = onnx.load(str(unfused))
    quantize._fix_scales(chain, quantize._activation_ranges(chain, feeds))
    onnx.save(chain, str(unfused))
    return {"static, 8-bit weights": quantize.quantize_static(fused, tmp / "full", feeds, False),
            "static, attention products int8 too": quantize.quantize_static(fused, tmp / "att", feeds, True,
                                                                             attention_products=True),
            "static, integer chains left unfused": unfused}


def variants(model: str, tmp: Path, sms, truth, ood, fp32: dict, speed_texts) -> list[dict]:
    """Static int8 variants (static_variants): speed, agreement with fp32 and flips."""
    rows = []
    for name, graph in {"7-bit weights (default)": Path(model) / "onnx" / "model_int8.onnx",
                        **static_variants(Path(model), tmp)}.items():
        q = quality(model, graph, sms, truth, ood, fp32)
        rows.append({"variant": name, "rows_per_s": rows_per_s(model, graph, speed_texts),
                     **{f"{k}_{m}": q[k][m] for k in ("sms", "ood") for m in ("agreement_with_fp32", "flips")},
                     "accuracy": q["sms"]["accuracy"]})
    return rows


def interleaved(model: str, graphs: dict, texts: list[str], rounds: int) -> dict:
    """In-process rows/s of each graph, measured in alternating rounds (A B C A B C ...) so that a busy,
    shared machine's load drifts over all of them alike; median per graph."""
    import statistics

    from bertbatch import Scorer
    from bertbatch.runtime import CPU, OrtRunner

    scorers = {name: Scorer(model, runner=OrtRunner(path, CPU), max_tokens=BUDGET_A[0], max_batch_rows=BUDGET_A[1])
               for name, path in graphs.items()}
    for scorer in scorers.values():
        scorer.logits(texts[:128])
    times = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, scorer in scorers.items():
            start = time.perf_counter()
            scorer.logits(texts)
            times[name].append(time.perf_counter() - start)
    return {name: round(len(texts) / statistics.median(t), 1) for name, t in times.items()}


def interleaved_main(args) -> None:
    """--interleave N: the graphs and static int8 variants timed in alternating rounds; one JSON line."""
    from bertbatch.machine import machine_signature

    model = Path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        graphs = {"fp32": model / "onnx/model.onnx", "int8 (static, default)": model / "onnx/model_int8.onnx",
                  "int8-dynamic": model / "onnx/model_int8_dynamic.onnx", **static_variants(model, tmp)}
        data = tmp / "input.parquet"
        make_input(data, args.rows)
        speed_texts = read_texts(data)
        ctx = context(model, speed_texts)
        speeds = interleaved(str(model), graphs, speed_texts, args.interleave)
    signature = machine_signature("CPUExecutionProvider")
    base = speeds["int8-dynamic"]
    record = {"benchmark": "bench_invariance/interleaved", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "model": str(model), "rows": args.rows, "rounds": args.interleave, **ctx, "isa": signature["isa"],
              "rows_per_s": speeds, "load_avg": os.getloadavg()}
    path = append_jsonl("invariance", record)
    print(f"{ctx['cpu']} ({', '.join(signature['isa'])}), {ctx['cpus']} CPUs, load average {os.getloadavg()[0]:.1f}; {args.rows:,} SMS rows, "
          f"{args.interleave} alternating rounds, median\n")
    print(markdown_table(["graph", "rows/s", "× dynamic int8", "× fp32"],
                         [[g, f"{v:,}", round(v / base, 2), round(v / speeds["fp32"], 2)] for g, v in speeds.items()]))
    print(f"\nAppended to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sms-spam")
    parser.add_argument("--rows", type=int, default=4000, help="SMS rows (repeated) timed end to end")
    parser.add_argument("--ood-rows", type=int, default=2000, help="movie-review sentences for the flip count")
    parser.add_argument("--heldout-rows", type=int, default=None, help="cap on held-out SMS rows (seeded sample)")
    parser.add_argument("--tune-seconds", type=float, default=90.0)
    parser.add_argument("--interleave", type=int, help="only time graphs and int8 variants in N alternating rounds")
    parser.add_argument("--variants", action="store_true", help="also measure static int8 variants")
    add_child_arguments(parser)
    args = parser.parse_args()
    if args.child:
        emit(child(args.child, args.model, args.data, args.out))
        return
    if args.interleave:
        interleaved_main(args)
        return
    model = Path(args.model)
    missing = [g for g in GRAPHS if not (model / "onnx" / f"model_{g.replace('-', '_')}.onnx").exists() and g != "fp32"]
    if missing:
        raise SystemExit(f"{model} lacks {missing}: `bertbatch export {model} --int8-dynamic` first.")
    from bertbatch.gates import out_of_domain_texts
    from bertbatch.machine import machine_signature
    from bertbatch.tune import record_line, tune

    sms, truth, sms_note = heldout_sms(model)
    if args.heldout_rows and args.heldout_rows < len(sms):
        keep = np.sort(np.random.default_rng(0).choice(len(sms), args.heldout_rows, replace=False))
        sms, truth = [sms[i] for i in keep], [truth[i] for i in keep]
        sms_note += f", {len(sms):,} of them sampled"
    ood, ood_note = out_of_domain_texts(args.ood_rows)
    files = {"fp32": "model.onnx", "int8": "model_int8.onnx", "int8-dynamic": "model_int8_dynamic.onnx"}
    q = {"fp32": quality(str(model), "model.onnx", sms, truth, ood, None)}
    for g in ("int8", "int8-dynamic"):
        q[g] = quality(str(model), files[g], sms, truth, ood, q["fp32"])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "input.parquet"
        make_input(data, args.rows)
        ctx = context(model, read_texts(data))
        runs = {m: run_child(__file__, [m, "--model", model, "--data", data, "--out", tmp / f"{m}.parquet"], m)
                for m in ("pipeline", *GRAPHS)}
        # score's own choice, without and with this machine's tune record (on a copy: the model dir stays as is)
        untuned = tmp / "untuned"
        shutil.copytree(model, untuned)
        data_copy = json.loads((untuned / "bertbatch.json").read_text())
        data_copy["tune"] = {}
        (untuned / "bertbatch.json").write_text(json.dumps(data_copy))
        runs["default, no tune record"] = run_child(__file__, ["default", "--model", untuned, "--data", data, "--out",
                                                               tmp / "d0.parquet"], "default")
        record = tune(untuned, provider="cpu", seconds=args.tune_seconds)
        runs["default, tuned"] = run_child(__file__, ["default", "--model", untuned, "--data", data, "--out",
                                                      tmp / "d1.parquet"], "default")
        variant_rows = variants(str(model), tmp, sms, truth, ood, q["fp32"], read_texts(data)[:1000]) if args.variants else []

    base = runs["pipeline"]["rows_per_s"]
    for r in runs.values():
        r["x_pipeline"] = round(r["rows_per_s"] / base, 2)
    signature = machine_signature("CPUExecutionProvider")
    graphs = {g: {"rows_per_s": runs[g]["rows_per_s"], "x_pipeline": runs[g]["x_pipeline"],
                  "accuracy": q[g]["sms"]["accuracy"],
                  "agreement_with_fp32_sms": q[g]["sms"].get("agreement_with_fp32", 1.0),
                  "agreement_with_fp32_ood": q[g]["ood"].get("agreement_with_fp32", 1.0),
                  "flips_sms": q[g]["sms"]["flips"], "flips_ood": q[g]["ood"]["flips"],
                  "max_abs_prob_delta": max(q[g]["sms"]["max_abs_prob_delta"], q[g]["ood"]["max_abs_prob_delta"]),
                  "bitwise": q[g]["sms"]["bitwise"] and q[g]["ood"]["bitwise"]} for g in GRAPHS}
    result = {"benchmark": "bench_invariance", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": str(model),
              "rows": args.rows, **ctx, "isa": signature["isa"], "heldout": sms_note, "heldout_rows": len(sms),
              "ood": ood_note, "ood_rows": len(ood), "batchings": [BUDGET_A, BUDGET_B], "graphs": graphs,
              "runs": list(runs.values()), "tune": {k: record[k] for k in ("choice", "default", "speedup_vs_default",
                                                                            "seconds", "gate")},
              "variants": variant_rows, "machine_shared": True}
    path = append_jsonl("invariance", result)

    print(f"{ctx['cpu']} ({', '.join(signature['isa'])}), {ctx['cpus']} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.rows:,} SMS rows timed; accuracy on {sms_note}; out-of-domain: {ood_note}\n")
    print(markdown_table(
        ["graph", "rows/s", "× pipeline", "accuracy", "top-1 = fp32 (SMS)", "top-1 = fp32 (OOD)",
         "flips SMS", "flips OOD", "max |Δprob|", "bitwise"],
        [[g, f"{v['rows_per_s']:,}", v["x_pipeline"], v["accuracy"], v["agreement_with_fp32_sms"],
          v["agreement_with_fp32_ood"], v["flips_sms"], v["flips_ood"], f"{v['max_abs_prob_delta']:.1e}", v["bitwise"]]
         for g, v in graphs.items()]))
    print(f"\npipeline: {runs['pipeline']['rows_per_s']:,} rows/s\n")
    print(markdown_table(["score", "rows/s", "× pipeline", "graph", "threads", "settings"],
                         [[m, f"{runs[m]['rows_per_s']:,}", runs[m]["x_pipeline"], runs[m]["graph"], runs[m]["threads"],
                           runs[m]["settings"]] for m in ("default, no tune record", "default, tuned")]))
    print("\n" + record_line(record))
    if variant_rows:
        print("\n" + markdown_table(list(variant_rows[0]), [list(r.values()) for r in variant_rows]))
    print(f"\nAppended to {path}")


if __name__ == "__main__":
    main()
