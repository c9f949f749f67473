"""Fixed start-up cost of `bertbatch score`: process start -> first scored row, and end to end, for a few rows.

Each measurement is a fresh interpreter running `bertbatch score MODEL in.csv -o out.parquet -q` (the CLI, as a
user or a Spark/Ray worker pays it). The child times the first return of the ONNX Runtime session (the first
scored batch) against the parent's clock at spawn, so "first row" includes interpreter start, imports, model
checks and session creation; "end to end" adds writing the output and exiting. Code versions run in
alternating rounds (A B A B ...) so load changes hit both alike; medians and the ratio are reported.

    python benchmarks/bench_startup.py models/sms-spam --before e053f9e --rounds 7
    python benchmarks/bench_startup.py models/sms-spam --before e053f9e --profile benchmarks/startup_profile.txt

`--hide-pandas` also runs each version with pandas hidden (what a `bertbatch[cpu]` install has: no pandas;
with pandas installed, pyarrow imports it at its first array conversion).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import append_jsonl, extract, git_commit, markdown_table, now  # noqa: E402

CHILD = r"""
import sys, time, json
class NoPandas:  # `import pandas` fails as where it is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {{name!r}}")
if {hide_pandas!r}:
    sys.meta_path.insert(0, NoPandas())
import bertbatch.runtime as runtime
first = []
run = runtime.OrtRunner.run
def timed(self, *args, **kwargs):
    out = run(self, *args, **kwargs)
    if not first:
        first.append((time.time(), time.process_time()))
    return out
runtime.OrtRunner.run = timed
from bertbatch.cli import cli
try:
    cli.main({argv!r}, prog_name="bertbatch", standalone_mode=False)
finally:
    print(json.dumps({{"first_row_at": first[0][0] if first else None, "cpu_s": first[0][1] if first else None,
        "modules": sorted(
        m for m in ("onnx", "pandas", "torch", "transformers") if sys.modules.get(m) is not None)}}), file=sys.stderr)
"""


def measure(code: Path, argv: list[str], hide_pandas: bool, profile: bool = False) -> dict:
    script = CHILD.format(hide_pandas=hide_pandas, argv=argv)
    cmd = [sys.executable, "-c", script]
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    if profile:  # cProfile cannot run `-c`: write the script to a file
        path = Path(tempfile.mkdtemp()) / "child.py"
        path.write_text(script)
        cmd = [sys.executable, "-m", "cProfile", "-s", "cumulative", str(path)]
    spawned = time.time()
    # cwd: not the checkout, whose bertbatch/ `python -c` would import ahead of PYTHONPATH
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=tempfile.gettempdir())
    ended = time.time()
    if done.returncode:
        raise SystemExit(f"{code}: {done.stderr[-3000:]}")
    facts = json.loads(done.stderr.strip().splitlines()[-1])
    result = {"first_row_s": round(facts["first_row_at"] - spawned, 3) if facts["first_row_at"] else None,
              "first_row_cpu_s": round(facts["cpu_s"], 3) if facts["cpu_s"] is not None else None,
              "end_to_end_s": round(ended - spawned, 3), "imported": facts["modules"]}
    if profile:
        result["profile"] = done.stdout
    return result


def machine() -> dict:
    sys.path.insert(0, str(REPO))
    from bertbatch.machine import available_cpus, cpu_model, kernel_flags

    return {"cpu": cpu_model(), "isa": kernel_flags(), "cpus": available_cpus()}


def load_average() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="An exported model directory.")
    parser.add_argument("--before", required=True, help="git ref of the code to compare with (e.g. the branch base).")
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hide-pandas", action="store_true", help="Also measure each version without pandas.")
    parser.add_argument("--profile", help="Instead: one cProfile run of each version, its top lines to this file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "in.csv"
        data.write_text("id,text\n" + "".join(f"{i},this was a good day number {i}\n" for i in range(args.rows)))
        # --silent: the old code's quiet flag (a hidden alias of -q in the new code)
        argv = ["score", str(args.model), str(data), "-o", str(tmp / "out.parquet"), "--overwrite", "--silent"]
        codes = {"before": extract(args.before, tmp / "before"), "after": REPO}
        if args.profile:
            with open(args.profile, "w") as fh:
                for name, code in codes.items():
                    prof = measure(code, argv, False, profile=True)
                    fh.write(f"## {name} ({args.before if name == 'before' else 'working tree'}), load {load_average()}\n")
                    fh.write("\n".join(prof["profile"].splitlines()[:60]) + "\n\n")
            print(f"Wrote {args.profile}")
            return
        variants = [(name, hide) for name in codes for hide in ([False, True] if args.hide_pandas else [False])]
        runs = {v: [] for v in variants}
        load_before = load_average()
        for _ in range(args.rounds):
            for name, hide in variants:
                runs[(name, hide)].append(measure(codes[name], argv, hide))
        load_after = load_average()
    summary = {}
    for (name, hide), results in runs.items():
        key = name + (" (no pandas)" if hide else "")
        summary[key] = {"first_row_s": statistics.median(r["first_row_s"] for r in results),
                        "first_row_cpu_s": statistics.median(r["first_row_cpu_s"] for r in results),
                        "end_to_end_s": statistics.median(r["end_to_end_s"] for r in results),
                        "imported": results[-1]["imported"]}
    record = {"at": now(), "commit": git_commit(), "model": str(args.model), "before": args.before, "rows": args.rows,
              "rounds": args.rounds,
              **machine(), "load_before": load_before, "load_after": load_after, "results": summary,
              "first_row_ratio": round(summary["after"]["first_row_s"] / summary["before"]["first_row_s"], 3),
              "first_row_cpu_ratio": round(summary["after"]["first_row_cpu_s"] / summary["before"]["first_row_cpu_s"], 3)}
    append_jsonl("startup", record)
    rows = [[k, f"{v['first_row_s']:.3f}", f"{v['first_row_cpu_s']:.3f}", f"{v['end_to_end_s']:.3f}",
             ", ".join(v["imported"]) or "-"] for k, v in summary.items()]
    print(markdown_table(["code", "start -> first row (s)", "CPU s of the process by then", "end to end (s)",
                          "heavy modules imported"], rows))
    print(f"\n{record['cpu']} ({', '.join(record['isa'])}), {record['cpus']} CPUs; load {load_before} -> {load_after}; "
          f"after/before first row: {record['first_row_ratio']} wall, {record['first_row_cpu_ratio']} CPU (medians)")


if __name__ == "__main__":
    main()
