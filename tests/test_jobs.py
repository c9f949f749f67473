"""Crash safety: SIGKILL + resume == uninterrupted, row conservation under awkward input, every refusal."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyarrow import csv

from bertbatch import Scorer, score_file
from bertbatch.errors import InputError, ModelError, OutputError
from fakes import RowIndexRunner, row_text


def _multi_part_input(root: Path, files=4, rows=2500) -> Path:
    rng = random.Random(7)
    src = root / "in"
    src.mkdir()
    for f in range(files):
        ids = [f"{f}-{i:06d}" for i in range(rows)]
        texts = [" ".join(rng.choices(["great", "awful", "the", "movie", "was", "trip"], k=rng.choice([1, 3, 12, 60])))
                 for _ in range(rows)]
        pq.write_table(pa.table({"id": ids, "text": texts}), src / f"part-{f}.parquet")
    return src


def _read_parts(out: Path) -> pa.Table:
    parts = sorted(out.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts])


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path, tiny_exported):
    # enough rows that scoring, not start-up, fills most of a run: ~2 s of parts being committed on 2 cores
    src = _multi_part_input(tmp_path, rows=10_000)
    options = ["--rows-per-part", "500", "--max-batch-rows", "16", "--window-rows", "250", "--probs", "--silent"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = lambda out, inputs=src: [sys.executable, "-m", "bertbatch", "score", str(tiny_exported), str(inputs),
                                       "-o", str(out), *options]  # noqa: E731
    # the part of a run before the first row is scored (interpreter, imports, model load): a one-file job of a
    # few rows; kills are spread over what follows it, where parts are being committed
    few = tmp_path / "few"
    few.mkdir()
    pq.write_table(pq.read_table(src / "part-0.parquet").slice(0, 8), few / "part-0.parquet")
    # untimed first: a fresh install compiles bytecode and reads the model cold on its first run, which would
    # stretch the reference's duration and push every kill point late (a resume then finishes before its kill)
    subprocess.run(command(tmp_path / "warm-up", few), env=env, check=True)
    reference = tmp_path / "reference"
    start = time.monotonic()
    subprocess.run(command(reference), env=env, check=True)
    duration = time.monotonic() - start
    expected = _read_parts(reference)
    start = time.monotonic()
    subprocess.run(command(tmp_path / "few-out", few), env=env, check=True)
    startup = min(time.monotonic() - start, 0.9 * duration)

    out = tmp_path / "killed"
    rng = random.Random(20261123)
    mid_job_kills = 0
    for attempt in range(12):
        proc = subprocess.Popen(command(out) + (["--resume"] if attempt else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:  # seeded kill points spread over the scoring part of an uninterrupted run
            proc.wait(timeout=startup + rng.uniform(0.05, 0.35) * (duration - startup))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        # whatever is under a final name is complete and readable
        for part in out.glob("part-*"):
            pq.ParquetFile(part).metadata
        manifest = out / "_manifest.json"
        if (out / "_SUCCESS").exists():  # killed after the job had finished (during interpreter exit)
            assert json.loads(manifest.read_text())["state"]["complete"]
            break
        if manifest.exists() and json.loads(manifest.read_text())["state"]["parts"]:
            mid_job_kills += 1
    else:
        subprocess.run(command(out) + ["--resume"], env=env, check=True)
    assert mid_job_kills >= 2, "the kills never landed mid-job: the test proved nothing"
    assert (out / "_SUCCESS").exists()
    result = _read_parts(out)
    assert result.equals(expected)
    state = json.loads((out / "_manifest.json").read_text())["state"]
    assert state["complete"] and state["rows_in"] == state["rows_written"] == 40_000


def test_finished_job_rerun_changes_nothing(tmp_path, tiny_exported):
    src = _multi_part_input(tmp_path, files=2, rows=300)
    out = tmp_path / "out"
    score_file(src, out, tiny_exported, rows_per_part=200)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    summary = score_file(src, out, tiny_exported, rows_per_part=200, resume=True)
    assert summary["resumed"] and summary["rows_this_run"] == 0 and summary["rows_written"] == 600
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before
    with pytest.raises(InputError, match="--resume to continue.*--overwrite"):
        score_file(src, out, tiny_exported, rows_per_part=200)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"probs": True}, r"--probs \(False -> True\)"),
        ({"rows_per_part": 100}, r"--rows-per-part \(200 -> 100\)"),
        ({"graph": "fp32"}, r"graph \(int8 -> fp32\)"),
        ("touch", r"input file contents"),
    ],
)
def test_resume_refuses_when_anything_that_changes_results_differs(tmp_path, tiny_exported, change, message):
    src = _multi_part_input(tmp_path, files=2, rows=300)
    out = tmp_path / "out"
    score_file(src, out, tiny_exported, rows_per_part=200)
    kwargs = {"rows_per_part": 200}
    if change == "touch":
        pq.write_table(pa.table({"id": ["x"], "text": ["changed"]}), src / "part-1.parquet")
    else:
        kwargs.update(change)
    with pytest.raises(InputError, match=f"Cannot resume .*{message}"):
        score_file(src, out, tiny_exported, resume=True, **kwargs)


def test_out_of_memory_halves_the_batch_and_never_skips_rows(tiny_model):
    class OomRunner(RowIndexRunner):
        attempts: list = []  # (rows, ran) for every call, the failed ones included

        def run(self, input_ids, attention_mask, token_type_ids=None):
            fits = input_ids.shape[0] <= 2
            self.attempts.append((input_ids.shape[0], fits))
            if not fits:
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer")
            return super().run(input_ids, attention_mask, token_type_ids)

    def halving(rows):  # the attempts a batch of `rows` must make: itself, then each half in turn until it fits
        return [(rows, True)] if rows <= 2 else [(rows, False), *halving(rows // 2), *halving(rows - rows // 2)]

    texts = [row_text(i, i % 7) for i in range(50)]
    runner = OomRunner(str(tiny_model / "tokenizer.json"))
    scorer = Scorer(tiny_model, runner=runner, logits=True)
    planned = [len(batch.rows) for batch in scorer.encode(texts).plan]
    result = scorer.logits(texts)
    assert result.logits[:, 0].tolist() == list(range(50))
    assert max(planned) > 2  # the budget's batches do not fit: they must be split
    assert runner.attempts == [a for rows in planned for a in halving(rows)]
    assert scorer.oom_splits == sum(not ran for _, ran in runner.attempts)
    assert sum(rows for rows, ran in runner.attempts if ran) == 50  # every row run once, none skipped


def test_other_runtime_errors_are_not_swallowed(tiny_model):
    class Broken(RowIndexRunner):
        def run(self, *args):
            raise RuntimeError("shape mismatch in node X")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        Scorer(tiny_model, runner=Broken(str(tiny_model / "tokenizer.json"))).logits(["a b c"] * 8)


# ----------------------------------------------------------------------------------------------- refusals
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


def test_label_count_differing_from_logits_width_is_refused(tmp_path, tiny_exported):
    model = _copy(tiny_exported, tmp_path / "m")
    _edit_config(model, id2label={"0": "neg", "1": "pos", "2": "meh"}, label2id={"neg": 0, "pos": 1, "meh": 2})
    with pytest.raises(ModelError, match="names 3 labels .* but the graph outputs 2 logits"):
        Scorer(model, graph="fp32")


def test_vocabulary_larger_than_embedding_is_refused(tmp_path, tiny_exported):
    model = _copy(tiny_exported, tmp_path / "m")
    _edit_config(model, vocab_size=1000)
    with pytest.raises(ModelError, match="tokenizer has 30522 tokens but the embedding only 1000 rows"):
        Scorer(model, graph="int8")


def test_external_data_outside_model_dir_is_refused(tmp_path, tiny_exported):
    import onnx

    model = _copy(tiny_exported, tmp_path / "m")
    graph = onnx.load(str(model / "onnx" / "model.onnx"))
    onnx.save_model(graph, str(model / "onnx" / "model.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    graph = onnx.load(str(model / "onnx" / "model.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../outside.bin"
    onnx.save_model(graph, str(model / "onnx" / "model.onnx"))
    with pytest.raises(ModelError, match="external data '../../outside.bin' outside the model directory"):
        Scorer(model, graph="fp32")


def test_pickle_checkpoint_is_refused_for_scoring(tmp_path, tiny_model):
    import torch
    from safetensors.torch import load_file

    model = _copy(tiny_model, tmp_path / "m")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="pickle weights .*--allow-pickle"):
        Scorer(model, graph="torch")
    assert Scorer(model, graph="torch", allow_pickle=True).predict(["great"])[0]["label"] in ("pos", "neg")


def test_output_never_writes_through_a_symlink(tmp_path, tiny_exported):
    src = _multi_part_input(tmp_path, files=1, rows=10)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.parquet"
    victim.write_text("precious")
    (out / "part-00000-00000.parquet").symlink_to(victim)
    with pytest.raises(OutputError, match="holds a link, part-00000-00000.parquet"):
        score_file(src, out, tiny_exported, resume=True)
    assert victim.read_text() == "precious"


# --------------------------------------------------------------------------------- property: rows conserved
AWKWARD = ["", " ", "NA", "null", "None", '"', '""', "a,b", "line\nbreak", "cr\rlf\r\n", "tab\there", "é✓表😀",
           "\ufeffbom", "x" * 3000, "0", "-", "#comment", "\\"]
texts_strategy = st.one_of(st.sampled_from(AWKWARD), st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80),
                           st.none())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.one_of(st.integers(-2**63, 2**63 - 1), st.none()), texts_strategy), min_size=1,
                     max_size=60),
       fmt=st.sampled_from(["csv", "parquet"]), window=st.integers(1, 16))
def test_output_rows_and_ids_always_equal_input(tmp_path_factory, tiny_exported, rows, fmt, window):
    tmp = tmp_path_factory.mktemp("prop")
    ids = [r[0] for r in rows]
    texts = [r[1] for r in rows]
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": pa.array(texts, pa.string())})
    if fmt == "csv":
        src = tmp / "in.csv"
        csv.write_csv(table, src)
    else:
        src = tmp / "in.parquet"
        pq.write_table(table, src)
    out = tmp / "out.parquet"
    summary = score_file(src, out, tiny_exported, window_rows=window, max_tokens=256, max_batch_rows=4)
    result = pq.read_table(out)
    assert result.num_rows == len(rows) == summary["rows_written"]
    if fmt == "parquet":
        assert result["id"].to_pylist() == ids
        assert result["text"].to_pylist() == texts
    else:  # CSV has no null: a null is written as an empty field and read back as ""
        assert result["id"].to_pylist() == ["" if i is None else str(i) for i in ids]
        assert result["text"].to_pylist() == ["" if t is None else t for t in texts]
    blank = [t is None or not t.strip() for t in texts]
    assert [e is not None for e in result["error"].to_pylist()] == blank
    assert [l is None for l in result["label"].to_pylist()] == blank


# ----------------------------------------------------------------------------------------------- load test
def _load(tmp_path, tiny_exported, rows):
    src = tmp_path / "big.parquet"
    words = np.array(["great", "awful", "the", "movie", "was", "trip", "food", "love"])
    rng = np.random.default_rng(0)
    texts = [" ".join(words[rng.integers(0, 8, size=n)]) for n in rng.integers(1, 24, size=rows)]
    pq.write_table(pa.table({"id": np.arange(rows, dtype=np.int64), "text": texts}), src, row_group_size=100_000)
    start = time.time()
    summary = score_file(src, tmp_path / "out", tiny_exported, rows_per_part=250_000)
    assert summary["rows_in"] == summary["rows_written"] == rows
    ids = pa.concat_tables([pq.read_table(p, columns=["id"]) for p in sorted((tmp_path / "out").glob("part-*"))])
    assert np.array_equal(ids["id"].to_numpy(), np.arange(rows))
    return time.time() - start


def test_load_100k_rows(tmp_path, tiny_exported):
    _load(tmp_path, tiny_exported, 100_000)


@pytest.mark.slow
def test_load_1m_rows(tmp_path, tiny_exported):
    _load(tmp_path, tiny_exported, 1_000_000)
