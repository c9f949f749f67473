"""The streaming scorer: order, bucketing, pass-through, outputs, bad input — fake runner and tiny model."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import csv

from bertbatch import Scorer, score_file
from bertbatch.errors import InputError, ModelError
from fakes import RowIndexRunner, row_text
from helpers import make_texts


@pytest.fixture
def fake(tiny_model):
    return RowIndexRunner(str(tiny_model / "tokenizer.json"))


def _rows(n, seed=0):
    rng = random.Random(seed)
    return [row_text(i, rng.choice([0, 1, 5, 30, 200])) for i in range(n)]


@pytest.mark.parametrize("max_tokens, window_rows", [(64, 7), (512, 100), (100000, 1000)])
def test_bucketing_never_mixes_or_reorders_rows(tmp_path, tiny_model, fake, max_tokens, window_rows):
    texts = _rows(500)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    out = tmp_path / "out.parquet"
    summary = score_file(src, out, tiny_model, runner=fake, logits=True, max_tokens=max_tokens,
                         window_rows=window_rows, max_batch_rows=32)
    logits = pq.read_table(out)["logits"].to_pylist()
    assert [int(l[0]) for l in logits] == list(range(500))
    assert summary["rows_written"] == 500
    assert len({shape for shape in fake.calls}) > 1  # batches really had different shapes
    assert all(r * l <= max(max_tokens, l) for r, l in fake.calls)


def test_window_mode_aggregates_each_row_over_its_own_windows(tmp_path, tiny_model, fake):
    scorer = Scorer(tiny_model, runner=fake, long_text="window", stride=16, max_length=32, logits=True)
    texts = [row_text(i, 100 if i % 2 else 1) for i in range(40)]
    result = scorer.logits(texts)
    # the row number sits at the text's start, so only the first window of a long row carries it:
    # windows after it read -1; the mean is (n + (w-1) * -1) / w
    for i in range(40):
        w = result.windows[i]
        assert result.logits[i, 0] == pytest.approx((i - (w - 1)) / w)
    assert result.windows[1] > 1 and result.windows[0] == 1
    assert result.truncated[1] and not result.truncated[0]


def test_single_equals_batched_equals_bucketed_on_tiny_model(tiny_exported):
    """The exported default graph (what `score` runs on CPU): every row's probabilities within the contract's
    1e-6 and identical labels, whether batched by budget, all in one batch, or one row per batch."""
    from bertbatch.gates import PROB_TOLERANCE

    texts = _rows(60, seed=3) + ["what a wonderful superb day", "an awful terrible boring trip"]
    default = Scorer(tiny_exported, provider="cpu")
    assert default.graph == str(tiny_exported / "onnx" / "model_int8.onnx")  # the default graph, not PyTorch
    batched = default.logits(texts).probs
    unbucketed = Scorer(tiny_exported, provider="cpu", max_tokens=10**9, max_batch_rows=10**6).logits(texts).probs
    single = Scorer(tiny_exported, provider="cpu", max_batch_rows=1).logits(texts).probs
    assert batched.shape == (len(texts), 2) and not np.isnan(batched).any()
    for other in (unbucketed, single):
        np.testing.assert_array_equal(other.argmax(1), batched.argmax(1))
        np.testing.assert_allclose(other, batched, rtol=0, atol=PROB_TOLERANCE)


def test_ids_and_odd_texts_pass_through_exactly(tmp_path, tiny_model):
    texts = ['NA', 'null', '', 'a "quoted"\nnew line', 'ünïcödé ✓ 表', '  ', 'N/A', '1e5']
    ids = ['00123', '9223372036854775807', '-0', '007', 'NaN', '', 'TRUE', '0x1F']
    src = tmp_path / "in.csv"
    src.write_bytes(b"\xef\xbb\xbf" + "id,text\r\n".encode() + "".join(
        f'{i},"{t.replace(chr(34), chr(34) * 2)}"\r\n' for i, t in zip(ids, texts)).encode("utf-8"))
    out = tmp_path / "out.parquet"
    score_file(src, out, tiny_model)
    table = pq.read_table(out)
    assert table.column_names[:2] == ["id", "text"]
    assert table["id"].to_pylist() == ids
    assert table["text"].to_pylist() == texts
    errors = table["error"].to_pylist()
    assert errors[2] == "empty text" and errors[5] == "empty text"
    assert table["label"].to_pylist()[2] is None
    assert table["label"].to_pylist()[0] in ("pos", "neg")


def test_parquet_int64_ids_and_nulls_keep_their_types(tmp_path, tiny_model):
    big = [2**63 - 1, -(2**63), 0]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": pa.array(big, pa.int64()), "text": ["good", None, "bad"]}), src)
    out = tmp_path / "out.parquet"
    summary = score_file(src, out, tiny_model)
    table = pq.read_table(out)
    assert table["id"].to_pylist() == big and table.schema.field("id").type == pa.int64()
    assert table["error"].to_pylist() == [None, "null text", None]
    assert summary["rows_in"] == 3 and summary["rows_with_error"] == 1


def test_directory_input_gives_part_files_and_success_last(tmp_path, tiny_model, fake, monkeypatch):
    from bertbatch import sink

    src = tmp_path / "in"
    src.mkdir()
    texts = _rows(90)
    for k in range(3):
        csv.write_csv(pa.table({"text": texts[k * 30:(k + 1) * 30]}), src / f"part-{k}.csv")
    (src / "_SUCCESS").write_text("")
    out = tmp_path / "out"
    seen = []  # (event, parts under their final names, _SUCCESS there) in the order they happen

    def look(event):
        seen.append((event, len(list(out.glob("part-*.parquet"))), (out / "_SUCCESS").exists()))

    run = fake.run
    monkeypatch.setattr(fake, "run", lambda *a: (look("batch"), run(*a))[1])
    mark_success = sink.mark_success
    monkeypatch.setattr(sink, "mark_success", lambda *a: (look("success"), mark_success(*a), look("after"))[1])
    summary = score_file(src, out, tiny_model, runner=fake, logits=True)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 3 and (out / "_SUCCESS").exists()
    # no _SUCCESS while rows are scored, and it comes after all three parts, and last of all
    assert all(not done for event, _, done in seen if event == "batch")
    assert [e for e in seen if e[0] != "batch"] == [("success", 3, False), ("after", 3, True)]
    assert seen[-1][0] == "after"
    assert max(p.stat().st_mtime_ns for p in [*parts, out / "_manifest.json"]) <= (out / "_SUCCESS").stat().st_mtime_ns
    logits = sum((pq.read_table(p)["logits"].to_pylist() for p in parts), [])
    assert [int(l[0]) for l in logits] == list(range(90))
    assert summary["parts"] == [str(p) for p in parts]


def test_csv_output_and_metadata(tmp_path, tiny_model):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["good", "bad"]}), src)
    out = tmp_path / "out.csv"
    score_file(src, out, tiny_model, probs=True, top_k=2)
    table = csv.read_csv(out)
    assert table.column_names == ["text", "label", "score", "prob_neg", "prob_pos", "top_k", "truncated", "error"]
    assert json.loads(table["top_k"][0].as_py())[0]["label"] in ("pos", "neg")
    pq_out = tmp_path / "out.parquet"
    score_file(src, pq_out, tiny_model)
    meta = pq.read_schema(pq_out).metadata
    assert meta[b"bertbatch.model"] == b"tiny" and b"bertbatch.provider" in meta and b"bertbatch.graph" in meta


def test_input_column_named_like_an_output_column_is_refused(tmp_path, tiny_model):
    src = tmp_path / "labeled.parquet"
    pq.write_table(pa.table({"id": ["1"], "text": ["good"], "label": ["pos"]}), src)
    for out in (tmp_path / "out.parquet", tmp_path / "outdir"):
        with pytest.raises(InputError, match=r"Input column\(s\) \['label'\] .* --keep id,text"):
            score_file(src, out, tiny_model)
    kept = score_file(src, tmp_path / "ok.parquet", tiny_model, keep=("id", "text"))
    assert kept["rows_written"] == 1


def test_existing_output_and_output_equal_input_are_refused(tmp_path, tiny_model):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["good"]}), src)
    with pytest.raises(InputError, match="overwrite the input"):
        score_file(src, src, tiny_model, overwrite=True)
    out = tmp_path / "out.parquet"
    out.write_text("old")
    with pytest.raises(InputError, match="--overwrite"):
        score_file(src, out, tiny_model)
    assert out.read_text() == "old"
    score_file(src, out, tiny_model, overwrite=True)
    assert pq.read_table(out).num_rows == 1


def _bad_inputs(tmp_path):
    d = tmp_path
    (d / "missing.csv").write_text("id,body\n1,hello\n")
    pq.write_table(pa.table({"text": [1, 2]}), d / "ints.parquet")
    (d / "utf8.csv").write_bytes(b"id,text\n1,fine\n2,bad \xff\xfe bytes\n")
    (d / "ragged.csv").write_text("id,text\n1,fine\n2,too,many,fields\n")
    (d / "empty.csv").write_text("")
    (d / "header.csv").write_text("id,text\n")
    good = pa.table({"text": ["a"] * 5000})
    pq.write_table(good, d / "full.parquet")
    (d / "truncated.parquet").write_bytes((d / "full.parquet").read_bytes()[:300])
    gz = gzip.compress(("text\n" + "hello there\n" * 20000).encode())
    (d / "truncated.csv.gz").write_bytes(gz[: len(gz) // 2])
    mixed = d / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"id": pa.array([1], pa.int64()), "text": ["a"]}), mixed / "a.parquet")
    pq.write_table(pa.table({"id": ["x"], "text": ["b"]}), mixed / "b.parquet")
    nocol = d / "nocol"
    nocol.mkdir()
    csv.write_csv(pa.table({"text": ["a"]}), nocol / "a.csv")
    csv.write_csv(pa.table({"body": ["b"]}), nocol / "b.csv")
    return d


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.csv", r"Column 'text' not found in .*missing.csv; columns are \['id', 'body'\]"),
        ("ints.parquet", r"Column 'text' in .*ints.parquet has type int64"),
        ("utf8.csv", r"utf8.csv, record 3, column 'text': invalid UTF-8"),
        ("ragged.csv", r"ragged.csv, .*expected 2 columns, found 4"),
        ("empty.csv", r"empty.csv is empty"),
        ("header.csv", r"header.csv has no data rows"),
        ("truncated.parquet", r"truncated.parquet: not a readable Parquet file"),
        ("truncated.csv.gz", r"truncated.csv.gz"),
        ("mixed", r"different schemas"),
        ("nocol", r"Column 'text' not found in .*b.csv"),
    ],
)
def test_bad_input_is_a_clear_error_with_no_output(tmp_path, tiny_model, name, message):
    d = _bad_inputs(tmp_path)
    out = tmp_path / "result.parquet"
    with pytest.raises(InputError, match=message):
        score_file(d / name, out, tiny_model)
    assert not out.exists()
    assert not list(tmp_path.glob(".result*"))  # no temp file left behind


def test_reject_mode_keeps_going_and_conserves_rows(tmp_path, tiny_model):
    src = tmp_path / "dirty.csv"
    src.write_bytes(b"id,text\n1,good\n2,bad \xff bytes\n3,too,many\n4,awful\n")
    out = tmp_path / "out.parquet"
    summary = score_file(src, out, tiny_model, on_bad_rows="reject")
    assert pq.read_table(out)["id"].to_pylist() == ["1", "4"]
    rejects = csv.read_csv(summary["rejects"]).to_pylist()
    assert {r["reason"].split(" ")[0] for r in rejects} == {"invalid", "expected"}
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_rejected"] == 4


def test_cuda_requested_without_cuda_is_an_error():
    from bertbatch import runtime

    assert runtime.resolve_provider("auto", ["CPUExecutionProvider"]) == runtime.CPU
    assert runtime.resolve_provider("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == runtime.CUDA
    assert runtime.resolve_provider("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == runtime.CPU
    with pytest.raises(ModelError, match=r"offers only \['CPUExecutionProvider'\].*bertbatch\[gpu\]"):
        runtime.resolve_provider("cuda", ["CPUExecutionProvider"])


def test_threads_follow_affinity_not_host_count(monkeypatch):
    from bertbatch import machine

    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0})
    assert machine.available_cpus() == 1


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession: reports `active` providers, records IOBinding use."""

    active = ["CPUExecutionProvider"]

    def __init__(self, path, sess_options=None, providers=None, disabled_optimizers=None):
        self.asked = providers
        self.disabled = disabled_optimizers

    def get_providers(self):
        return list(self.active)

    def get_inputs(self):
        return [type("I", (), {"name": n}) for n in ("input_ids", "attention_mask")]

    def get_outputs(self):
        return [type("O", (), {"name": "logits", "shape": ["batch", 2]})]

    def io_binding(self):
        return _FakeBinding()

    def run_with_iobinding(self, binding):
        binding.ran = True


class _FakeBinding:
    def __init__(self):
        self.inputs, self.bound, self.ran, self.output_device = {}, {}, False, None

    def clear_binding_inputs(self):
        self.inputs, self.bound = {}, {}

    def clear_binding_outputs(self):
        pass

    def bind_ortvalue_input(self, name, value):
        self.bound[name] = value
        self.inputs[name] = value.numpy().copy()

    def bind_output(self, name, device):
        self.output_device = device

    def copy_outputs_to_cpu(self):
        return [np.zeros((len(self.inputs["input_ids"]), 2), dtype=np.float16)]


def test_silent_cuda_fallback_is_an_error(tiny_exported, monkeypatch):
    import onnxruntime as ort

    from bertbatch.runtime import CUDA, OrtRunner

    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    with pytest.raises(ModelError, match="fell back"):
        OrtRunner(tiny_exported / "onnx" / "model.onnx", CUDA)


def test_cuda_runner_uses_iobinding_and_returns_float32(tiny_exported, monkeypatch):
    import onnxruntime as ort

    from bertbatch.runtime import CUDA, OrtRunner

    monkeypatch.setattr(_FakeSession, "active", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    runner = OrtRunner(tiny_exported / "onnx" / "model_fp16.onnx", CUDA)
    runner._device = "cpu"  # this onnxruntime build has no CUDA allocator: the buffers live on the host here
    ids = np.ones((3, 8), dtype=np.int64)
    out = runner.run(ids, ids, ids)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    assert runner._binding.ran and set(runner._binding.inputs) == {"input_ids", "attention_mask"}
    assert runner._binding.output_device == "cpu"
    assert runner.session.asked[0][0] == CUDA
    assert runner.session.disabled == []  # SkipLayerNormalization is fast on CUDA: fusion stays on


def test_cpu_session_keeps_skip_layer_norm_unfused(tiny_exported, monkeypatch):
    import onnxruntime as ort

    from bertbatch.runtime import CPU, OrtRunner

    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    runner = OrtRunner(tiny_exported / "onnx" / "model_int8.onnx", CPU)
    assert runner.session.disabled == ["SkipLayerNormFusion"]


def test_model_dir_picks_fp16_on_cuda_and_int8_on_cpu(tiny_exported):
    from bertbatch.modeldir import ModelDir
    from bertbatch.runtime import CPU, CUDA

    model = ModelDir.open(tiny_exported)
    assert model.graph_path(None, CUDA).name == "model_fp16.onnx"
    assert model.graph_path(None, CPU).name == "model_int8.onnx"
    assert model.graph_path("fp32", CUDA).name == "model.onnx"


@pytest.mark.gpu
def test_cuda_labels_match_cpu(tiny_exported):
    texts = make_texts(200, seed=4)[0] + ["what a wonderful superb day", "an awful terrible boring trip"]
    cuda = Scorer(tiny_exported, provider="cuda")
    assert cuda.runner.provider == "CUDAExecutionProvider" and cuda.graph.endswith("model_fp16.onnx")
    cpu = Scorer(tiny_exported, provider="cpu", graph="fp32")
    on_gpu, on_cpu = cuda.predict(texts), cpu.predict(texts)
    assert [r["label"] for r in on_gpu] == [r["label"] for r in on_cpu]
    assert len({r["label"] for r in on_cpu}) == 2  # both labels occur: equal labels are not one constant
    np.testing.assert_allclose(cuda.logits(texts).logits, cpu.logits(texts).logits, atol=0.05)  # fp16 vs fp32


def test_runners_satisfy_the_protocol_and_name_the_file_that_runs(tiny_exported, fake):
    from pathlib import Path

    from bertbatch.runtime import Runner

    onnx_scorer = Scorer(tiny_exported, provider="cpu", graph="fp32")
    assert isinstance(onnx_scorer.runner, Runner) and isinstance(fake, Runner)
    assert onnx_scorer.graph_file == Path(tiny_exported) / "onnx" / "model.onnx"
    assert Scorer(tiny_exported, runner=fake).graph_file is None  # a runner that runs no file


def test_cuda_runner_refills_one_input_buffer_per_batch_shape(tiny_exported, monkeypatch):
    import onnxruntime as ort

    from bertbatch.runtime import CUDA, OrtRunner

    monkeypatch.setattr(_FakeSession, "active", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    runner = OrtRunner(tiny_exported / "onnx" / "model_fp16.onnx", CUDA)
    runner._device = "cpu"
    first, second, other = np.full((4, 8), 7), np.arange(32).reshape(4, 8), np.ones((2, 16), dtype=np.int64)
    runner.run(first, first)
    buffer = runner._binding.bound["input_ids"]
    runner.run(second, second)
    assert runner._binding.bound["input_ids"] is buffer  # same shape: the same buffer, refilled
    assert runner._binding.inputs["input_ids"].tolist() == second.tolist()
    runner.run(other, other)
    assert runner._binding.bound["input_ids"] is not buffer
    assert runner._inputs.made == 4  # two inputs x two shapes


def test_buffer_cache_reuses_by_key_and_drops_the_least_recent():
    from bertbatch.runtime import BufferCache

    cache = BufferCache(capacity=2)
    a = cache.get((4, 8), object)
    assert cache.get((4, 8), object) is a
    b = cache.get((2, 16), object)
    cache.get((4, 8), object)  # (2, 16) is now the least recently used
    cache.get((1, 512), object)
    assert len(cache) == 2 and cache.made == 3
    assert cache.get((4, 8), object) is a and cache.get((2, 16), object) is not b
