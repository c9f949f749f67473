"""Static int8 from ORT's integer kernels: fixed scales, and the MatMulIntegerToFloat fusion changes no output."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from helpers import make_texts

from bertbatch import quantize
from bertbatch.export import _calibration_feeds


def _feeds(model_dir, texts):
    return _calibration_feeds(model_dir, texts)


def _run(graph, feeds):
    session = ort.InferenceSession(onnx.load(str(graph)).SerializeToString() if not isinstance(graph, onnx.ModelProto)
                                   else graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in f.items() if k in names})[0] for f in feeds])


def _static_parts(tmp_path, tiny_exported, calibration):
    """The dynamic graph with fixed scales, before and after the fusion."""
    dynamic = quantize._integer_ops(tiny_exported / "onnx" / "model.onnx", tmp_path / "dynamic.onnx", True)
    model = onnx.load(str(dynamic))
    quantize._fix_scales(model, quantize._activation_ranges(model, calibration))
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    quantize._fuse_integer_matmuls(fused)
    return model, fused


def test_fixed_scales_leave_no_run_time_scale_and_fusion_leaves_no_integer_chain(tmp_path, tiny_exported):
    texts, _ = make_texts(40, seed=3)
    unfused, fused = _static_parts(tmp_path, tiny_exported, _feeds(tiny_exported, texts))
    ops, before = [n.op_type for n in fused.graph.node], [n.op_type for n in unfused.graph.node]
    assert "DynamicQuantizeLinear" not in before
    fused_count = ops.count("MatMulIntegerToFloat")
    assert fused_count == before.count("MatMulInteger") > 0 and "MatMulInteger" not in ops
    assert before.count("Cast") - ops.count("Cast") == fused_count  # each chain's Cast went with it


def test_fusion_gives_the_unfused_chain_s_outputs(tmp_path, tiny_exported):
    texts, _ = make_texts(60, seed=4)
    feeds = _feeds(tiny_exported, texts)
    unfused, fused = _static_parts(tmp_path, tiny_exported, feeds[:30])
    np.testing.assert_allclose(_run(fused, feeds), _run(unfused, feeds), atol=1e-5)


def test_scales_follow_dynamic_quantize_linear_s_formula():
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dq")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("q", onnx.TensorProto.UINT8, [4])]))
    quantize._fix_scales(model, {"x": (-1.0, 3.0)})
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert constants["s"] == np.float32(4.0 / 255) and constants["z"] == 64  # rint(1 / (4/255)) = rint(63.75)
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear"]


def test_exported_static_int8_weights_are_7_bit_so_avx2_sums_cannot_saturate(tiny_exported):
    """x86 without VNNI adds two u8 x s8 products in a saturating int16 (vpmaddubsw): 2 x 255 x 64 = 32,640 fits,
    2 x 255 x 127 does not. The default export's integer-op weights must stay within [-64, 64]."""
    model = onnx.load(str(tiny_exported / "onnx" / "model_int8.onnx"))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    integer_weights = [weights[n.input[1]] for n in model.graph.node
                       if n.op_type in ("MatMulIntegerToFloat", "QAttention") and n.input[1] in weights]
    assert integer_weights and all(w.dtype == np.int8 for w in integer_weights)
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in integer_weights) <= 64
