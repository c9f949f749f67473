"""Fine-tuning speed settings (issue 21): bf16 autocast chosen from the machine, the per-epoch pace line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bertbatch import fine_tune
from bertbatch.cli import cli
from bertbatch.train import bf16_autocast

ZEN3 = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "sha_ni"}  # this machine: AVX2, no bf16
SAPPHIRE_RAPIDS = ZEN3 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
ZEN5 = ZEN3 | {"avx512f", "avx512_vnni", "avx512_bf16"}
ICE_LAKE = ZEN3 | {"avx512f", "avx512_vnni"}  # AVX-512 without bf16: torch would emulate it


@pytest.mark.parametrize("flags, cuda_bf16, expected", [
    (ZEN3, False, False), (ICE_LAKE, False, False), (SAPPHIRE_RAPIDS, False, True), (ZEN5, False, True),
    (ZEN3, True, True), (set(), False, False),
])
def test_auto_takes_bf16_only_where_the_device_has_bf16_units(flags, cuda_bf16, expected):
    assert bf16_autocast("auto", flags, cuda_bf16) is expected


def test_an_explicit_precision_wins_over_the_flags():
    assert bf16_autocast("fp32", SAPPHIRE_RAPIDS, True) is False
    assert bf16_autocast("bf16", ZEN3, False) is True


def test_each_epoch_reports_rows_per_second_and_time_left_and_the_manifest_the_precision(tmp_path, tiny_base,
                                                                                        sentiment_csv):
    events = []
    manifest = fine_tune(sentiment_csv, tmp_path / "m", base_model=tiny_base, epochs=2, lr=3e-3, batch_size=16,
                         max_length=32, quiet=True, progress=lambda event, value: events.append((event, value)))
    epochs = [value for event, value in events if event == "epoch"]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert all(row["rows_per_s"] > 0 for row in epochs)
    assert epochs[0]["seconds_left"] > 0 and epochs[-1]["seconds_left"] == 0
    precision = manifest["train"]["precision"]
    assert precision["autocast"] in ("fp32", "bf16") and precision["cpu"]
    assert precision["autocast"] == ("bf16" if precision["cpu_bf16_flags"] or precision["device"] != "cpu" else "fp32")


def test_cli_prints_the_pace_columns(tmp_path, tiny_base, sentiment_csv):
    result = CliRunner().invoke(cli, ["train", str(sentiment_csv), "-o", str(tmp_path / "m"), "--base-model", tiny_base,
                                      "--epochs", "1", "--max-length", "32", "--truncation", "head+tail"])
    assert result.exit_code == 0, result.output
    assert "rows_per_s" in result.output and "seconds_left" in result.output
    assert json.loads((tmp_path / "m" / "bertbatch.json").read_text())["truncation"]["strategy"] == "head+tail"
