"""The embedding: the vector a sequence-classification head's last projection reads, as a second graph output.

The head computes it on every pass anyway; exposing it costs one more output copy. What it is, per family:

- BERT: the pooled output, tanh(pooler.dense(h_[CLS])) (BertForSequenceClassification feeds it to `classifier`).
- RoBERTa, XLM-R, CamemBERT: tanh(classifier.dense(h_<s>)), the input of the head's `out_proj`.
- ELECTRA: gelu(classifier.dense(h_[CLS])), the input of the head's `out_proj`.

Other architectures are refused: their heads have not been checked against this definition.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError

OUTPUT = "embedding"  # the graph output's name
FAMILIES = {
    "bert": "the pooled output tanh(pooler.dense(h_[CLS]))",
    "roberta": "tanh(classifier.dense(h_<s>)), the input of the head's out_proj",
    "xlm-roberta": "tanh(classifier.dense(h_<s>)), the input of the head's out_proj",
    "camembert": "tanh(classifier.dense(h_<s>)), the input of the head's out_proj",
    "electra": "gelu(classifier.dense(h_[CLS])), the input of the head's out_proj",
}


def definition(model_type: str | None) -> str | None:
    """What the embedding is for this model type; None when bertbatch does not offer one."""
    return FAMILIES.get(model_type or "")


def embedding_size(config: dict) -> int:
    """The embedding's width for a model's config.json: its hidden size (every family above projects
    hidden -> hidden before the last projection). Refuses architectures it has no definition for."""
    model_type = config.get("model_type")
    if definition(model_type) is None:
        raise ModelError(f"--embeddings is offered for {', '.join(sorted(FAMILIES))} models; this one is "
                         f"'{model_type}', whose classification head bertbatch has not checked. Score without --embeddings.")
    return int(config["hidden_size"])


def head_projection(model):
    """The torch Linear whose input is the embedding: `classifier` (BERT) or `classifier.out_proj`."""
    from torch import nn

    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    projection = getattr(head, "out_proj", None)
    if isinstance(projection, nn.Linear):
        return projection
    raise ModelError(f"{type(model).__name__}: no classifier Linear found to read the embedding from.")


def add_output(graph: Path, width: int) -> None:
    """Make the tensor the classifier's last Gemm/MatMul reads a graph output named `embedding` (in place).

    Found from the logits backwards: logits = Gemm(x, W, b), or Add(MatMul(x, W), b). The tensor keeps its
    producer; an Identity gives it the stable name, so later passes (optimizer, quantizer) carry it along."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(graph))
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    logits = model.graph.output[0].name
    node = producer.get(logits)
    if node is not None and node.op_type == "Add":
        node = next((producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul"), None)
    if node is None or node.op_type not in ("Gemm", "MatMul") or node.input[0] in initializers:
        raise ModelError(f"{graph}: cannot find the classifier's MatMul/Gemm that produces '{logits}'.")
    if any(o.name == OUTPUT for o in model.graph.output):
        return
    nodes.append(helper.make_node("Identity", [node.input[0]], [OUTPUT], name="bertbatch_embedding"))
    batch = model.graph.output[0].type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or "batch_size"
    model.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch_dim, width]))
    onnx.save(model, str(graph))


def graph_has_output(graph: Path) -> bool:
    """Whether an ONNX file declares the embedding output (read without its weights)."""
    import onnx

    return any(o.name == OUTPUT for o in onnx.load(str(graph), load_external_data=False).graph.output)
