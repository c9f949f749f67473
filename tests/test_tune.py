"""`bertbatch tune`: a per-machine record of the fastest gated configuration, and how `score` uses it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bertbatch import Scorer
from bertbatch import tune as tune_module
from bertbatch.cli import cli
from bertbatch.errors import InputError
from bertbatch.runtime import CPU, CUDA
from bertbatch.machine import machine_signature, signature_key
from bertbatch.tune import candidate_graphs, thread_candidates, tune

INVARIANT = {"fp32", "int8", "bf16"}


@pytest.fixture
def model_copy(tmp_path, tiny_exported):
    path = tmp_path / "m"
    shutil.copytree(tiny_exported, path)
    return path


def manifest(path):
    return json.loads((path / "bertbatch.json").read_text())


@pytest.fixture
def tuned(model_copy):
    return model_copy, tune(model_copy, provider="cpu", seconds=2, rows=48)


def _point(p: dict) -> tuple:
    return p["graph"], p["max_tokens"], p["max_batch_rows"], p["threads"]


def assert_choice_follows_from_the_figures(record: dict) -> None:
    """The record's choice is what its own measurements decide: the first pass's fastest point when it beat
    the safe default in both confirming rounds (and passed the gate), else the default."""
    measured, default = record["measured"], record["default"]
    first_pass = [p for p in measured if not p.get("confirm")]
    confirms = [p for p in measured if p.get("confirm")]
    fastest = max(first_pass, key=lambda p: p["rows_per_s"])
    assert default in first_pass and _point(default) == ("int8", 1024, 32, record["signature"]["cpus"])
    if _point(fastest) == _point(default):
        assert not confirms and record["choice"] == default
        return
    assert [_point(p) for p in confirms] == [_point(default), _point(fastest)] * 2  # alternating rounds
    wins = sum(b["rows_per_s"] > d["rows_per_s"] for d, b in zip(confirms[::2], confirms[1::2]))
    chosen = fastest if wins == 2 else default
    assert record["choice"] == (chosen if record["gate"]["passed"] else default)
    assert record["speedup_vs_default"] == round(chosen["rows_per_s"] / default["rows_per_s"], 3)


def test_tune_records_the_fastest_gated_point_under_this_machines_signature(tuned):
    model, record = tuned
    key = signature_key(machine_signature(CPU))
    assert manifest(model)["tune"][key]["choice"] == record["choice"]
    assert_choice_follows_from_the_figures(record)
    assert record["choice"]["graph"] in ("fp32", "int8")
    assert record["gate"]["passed"] and record["gate"]["label_flips"] == 0
    assert record["signature"]["provider"] == CPU and "onnxruntime" in record["signature"]
    assert "int8-dynamic" in record["skipped"]  # present on disk, never timed
    assert {p["graph"] for p in record["measured"]} == {"fp32", "int8"}


class _Slowed:
    """A runner that waits before each batch: this machine made slower for the points it is given to."""

    def __init__(self, runner, delay: float):
        self._runner, self._delay = runner, delay

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, *inputs):
        time.sleep(self._delay)
        return self._runner.run(*inputs)


def test_tune_records_a_point_that_beats_the_default(model_copy, monkeypatch):
    """A setup where the safe default (int8, 1024 tokens/32 rows) is surely the slowest: each of its batches
    waits 50 ms. A tune that kept the default whatever it measured fails here."""
    measure = tune_module.time_rows_per_s

    def default_slowed(model_dir, runner, texts, budget):
        slow = Path(runner.graph).name == "model_int8.onnx" and tuple(budget) == (1024, 32)
        return measure(model_dir, _Slowed(runner, 0.05) if slow else runner, texts, budget)

    monkeypatch.setattr(tune_module, "time_rows_per_s", default_slowed)
    record = tune(model_copy, provider="cpu", seconds=2, rows=48)
    assert _point(record["choice"]) != _point(record["default"])
    assert_choice_follows_from_the_figures(record)
    assert record["speedup_vs_default"] > 1


def test_score_uses_the_record_for_this_machine_and_says_so(tuned):
    model, record = tuned
    scorer = Scorer(model, provider="cpu")
    choice = record["choice"]
    assert scorer.settings_reason.startswith("tuned on this machine")
    assert scorer.graph.endswith({"fp32": "model.onnx", "int8": "model_int8.onnx"}[choice["graph"]])
    assert (scorer.max_tokens, scorer.max_batch_rows, scorer.runner.threads) == (
        choice["max_tokens"], choice["max_batch_rows"], choice["threads"])


def test_explicit_options_override_the_record(tuned):
    model, record = tuned
    other = "int8" if record["choice"]["graph"] == "fp32" else "fp32"
    scorer = Scorer(model, provider="cpu", graph=other, max_tokens=77)
    assert scorer.max_tokens == 77 and scorer.max_batch_rows == 32  # other graph: default row cap, not the record's
    assert scorer.settings_reason.startswith(f"--graph {other}")


def test_a_record_from_another_machine_is_not_used(tuned):
    model, _ = tuned
    data = manifest(model)
    (record,) = data["tune"].values()
    record["signature"]["cpu"] = "Some Other CPU"
    data["tune"] = {signature_key(record["signature"]): record}
    (model / "bertbatch.json").write_text(json.dumps(data))
    scorer = Scorer(model, provider="cpu")
    assert scorer.settings_reason.startswith("safe defaults (no tune record for this machine")
    assert scorer.graph.endswith("model_int8.onnx") and scorer.max_tokens == 1024


def test_a_record_of_graphs_since_re_exported_is_not_used(tuned):
    model, _ = tuned
    data = manifest(model)
    data["graphs"]["int8"]["sha256"] = "0" * 64
    (model / "bertbatch.json").write_text(json.dumps(data))
    assert "re-exported" in Scorer(model, provider="cpu").settings_reason


def test_bf16_is_a_candidate_only_on_cpus_with_amx_or_avx512_bf16():
    present = {"fp32", "int8", "bf16", "int8-dynamic"}
    keys, skipped = candidate_graphs(present, INVARIANT, CPU, {"avx2", "fma"})
    assert keys == ["fp32", "int8"] and "AMX" in skipped["bf16"]
    assert candidate_graphs(present, INVARIANT, CPU, {"avx512f", "avx512_bf16"})[0] == ["fp32", "int8", "bf16"]
    assert candidate_graphs(present, INVARIANT, CPU, {"amx_tile", "amx_bf16"})[0] == ["fp32", "int8", "bf16"]
    # a bf16-capable CPU without a bf16 graph: skipped with the reason
    keys, skipped = candidate_graphs({"fp32", "int8"}, INVARIANT, CPU, {"amx_bf16"})
    assert keys == ["fp32", "int8"] and "no graph" in skipped["bf16"]


def test_cuda_candidates_are_fp16_and_fp32_and_cpu_needs_the_invariance_gate():
    assert candidate_graphs({"fp32", "int8", "fp16"}, {"fp32", "int8"}, CUDA, set())[0] == ["fp16", "fp32"]
    keys, skipped = candidate_graphs({"fp32", "int8"}, {"fp32"}, CPU, set())
    assert keys == ["fp32"] and "invariance" in skipped["int8"]


def test_thread_candidates_cover_all_half_and_one():
    assert thread_candidates(16) == [16, 8, 1]
    assert thread_candidates(1) == [1]


def test_tune_refuses_a_non_positive_budget(model_copy):
    with pytest.raises(InputError, match="positive time budget"):
        tune(model_copy, provider="cpu", seconds=0)


def test_export_no_tune_skips_the_tune_and_the_tune_command_records_one(tmp_path, tiny_model):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    result = CliRunner().invoke(cli, ["export", str(model), "--no-tune", "--quantize", "none"])
    assert result.exit_code == 0, result.output
    assert "Tuned for" not in result.output and not manifest(model).get("tune")
    result = CliRunner().invoke(cli, ["tune", str(model), "--provider", "cpu", "--seconds", "1", "--rows", "16"])
    assert result.exit_code == 0, result.output
    assert "Tuned for" in result.output and "fp32" in result.output
    assert len(manifest(model)["tune"]) == 1
