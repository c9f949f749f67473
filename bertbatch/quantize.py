"""Static int8: ONNX Runtime's fused integer kernels with activation scales fixed once, so a row's arithmetic
never depends on which rows share its batch.

ONNX Runtime's dynamic quantizer gives the fastest CPU int8 graph (QAttention for fused attention, integer
MatMuls for the rest, 8-bit embedding tables), but each DynamicQuantizeLinear computes its scale over the
whole batch tensor, padding included. Here every DynamicQuantizeLinear becomes a QuantizeLinear whose scale
and zero point are what DynamicQuantizeLinear's own formula gives over the ranges seen on calibration texts
(one unpadded text per run). Weights are the quantizer's: per-channel int8.

ORT's QDQ route (its own `quantize_static`) cannot reach QAttention, and measured 0.95x dynamic int8 on MiniLM SMS
(benchmarks/README.md, "Batch invariance"); this graph runs the dynamic graph's kernels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np


def quantize_static(graph: Path, out: Path, feeds: list[dict], reduce_range: bool,
                    attention_products: bool = False) -> Path:
    """`graph` (fp32, ideally with fused attention) as static int8 at out/model_int8.onnx.

    feeds: one input dict per calibration text, unpadded (ranges come from real tokens only).
    reduce_range: 7-bit weights. On x86 without VNNI, ORT's u8s8 kernel (vpmaddubsw) adds two u8 x s8 products
    into a saturating int16; 255 x 127 x 2 overflows it, 255 x 63 x 2 does not, so 7-bit weights keep the
    integer sums exact on every x86 CPU (unverified on an AVX2-only CPU).
    attention_products: also quantize MatMuls of two activations (QK^T, AV of a layer whose attention is not
    fused: the trimmed last one). Off: no consistent gain measured (-0.1% to +2%, benchmarks/README.md),
    and fp32 keeps that layer's attention as exact as the fp32 graph's."""
    import onnx

    out.mkdir(parents=True)
    dynamic = _integer_ops(graph, out / "dynamic.onnx", reduce_range, attention_products)
    model = onnx.load(str(dynamic))
    ranges = _activation_ranges(model, feeds)
    _fix_scales(model, ranges)
    _fuse_integer_matmuls(model)
    target = out / "model_int8.onnx"
    onnx.save(model, str(target))
    dynamic.unlink()
    return target


def _integer_ops(graph: Path, target: Path, reduce_range: bool, attention_products: bool = False) -> Path:
    """ORT's dynamic int8 of `graph`. On a fused graph, ORT's MatMul quantizer needs the type of every MatMul
    output, which plain ONNX shape inference cannot see through com.microsoft ops (Attention): "Unable to find
    data type for weight_name ...". Symbolic shape inference fills those types in first."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    typed = target.with_name("typed.onnx")
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(graph)), auto_merge=True), str(typed))
    hint = _DropMessage("pre-process")  # ORT's root-logger advice to run its shape pre-processing: not for users
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(str(typed), str(target), op_types_to_quantize=["MatMul", "Attention", "Gather"],
                         per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": not attention_products})
    finally:
        logging.getLogger().removeFilter(hint)
    typed.unlink()
    return target


def _activation_ranges(model, feeds: list[dict]) -> dict[str, tuple[float, float]]:
    """min and max (each widened to include 0, as DynamicQuantizeLinear does) of every tensor a
    DynamicQuantizeLinear reads, over the calibration feeds."""
    import onnx
    import onnxruntime as ort

    tensors = [n.input[0] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in dict.fromkeys(tensors) if t not in known)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    low = dict.fromkeys(tensors, 0.0)
    high = dict.fromkeys(tensors, 0.0)
    for feed in feeds:
        for name, value in zip(low, session.run(list(low), {k: v for k, v in feed.items() if k in names})):
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
    return {name: (low[name], high[name]) for name in low}


def _fix_scales(model, ranges: dict[str, tuple[float, float]]) -> None:
    """Each DynamicQuantizeLinear -> QuantizeLinear with constant scale and zero point under the names its
    outputs had, so the integer ops that read them are unchanged. uint8, asymmetric, zero exactly representable:
    DynamicQuantizeLinear's formula (ONNX operator spec) on the calibrated range."""
    from onnx import helper, numpy_helper

    nodes = []
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        low, high = ranges[node.input[0]]
        scale = np.float32((high - low) / 255.0) or np.float32(1.0)  # an all-zero tensor: any scale is exact
        zero_point = np.uint8(np.clip(np.rint(-low / scale), 0, 255))
        quantized, scale_name, zero_name = node.output
        model.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), scale_name),
                                        numpy_helper.from_array(np.array(zero_point, np.uint8), zero_name)])
        nodes.append(helper.make_node("QuantizeLinear", [node.input[0], scale_name, zero_name], [quantized],
                                      name=node.name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _fuse_integer_matmuls(model) -> None:
    """MatMulInteger -> Cast -> Mul(a_scale * b_scale) [-> Add(bias)] as one MatMulIntegerToFloat.

    ORT fuses this pattern itself only while the scale product is a node; with constant scales its constant
    folding removes that node first; the unfused chain ran 0.95-0.96x dynamic int8, fused 1.02-1.03x (MiniLM SMS,
    2 cores, benchmarks/README.md)."""
    from onnx import helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    biases = {i.name: i.dims[0] for i in graph.initializer if len(i.dims) == 1}
    columns = {i.name: i.dims[-1] for i in graph.initializer if len(i.dims) == 2}  # the weights' N

    def only_consumer(name: str, op: str):
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    drop, fused = set(), {}
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        cast = only_consumer(node.output[0], "Cast")
        mul = cast and only_consumer(cast.output[0], "Mul")
        quantize = producer.get(node.input[0])
        if not mul or quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        scales = producer.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
        if scales is None or scales.op_type != "Mul" or quantize.input[1] not in scales.input:
            continue
        a_scale = quantize.input[1]
        b_scale = scales.input[1] if scales.input[0] == a_scale else scales.input[0]
        zero_points = list(node.input[2:4]) + [""] * (4 - len(node.input))
        inputs = [node.input[0], node.input[1], a_scale, b_scale, *zero_points]
        output = mul.output[0]
        add = only_consumer(output, "Add")
        if add is not None:
            bias = add.input[1] if add.input[0] == output else add.input[0]
            if bias in biases and biases[bias] == columns.get(node.input[1]):
                inputs.append(bias)
                output = add.output[0]
                drop.add(id(add))
        drop.update({id(node), id(cast), id(mul)})
        if len(consumers.get(scales.output[0], [])) == 1:
            drop.add(id(scales))
        fused[id(node)] = helper.make_node("MatMulIntegerToFloat", inputs, [output], name=f"{node.name}_to_float",
                                           domain="com.microsoft")
    nodes = [fused.get(id(n), n) for n in graph.node if id(n) not in drop or id(n) in fused]
    del graph.node[:]
    graph.node.extend(nodes)
    if fused and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


class _DropMessage(logging.Filter):
    """Drops log records whose message contains `text`."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()
