"""Export-time rewrite: the encoder's last layer computed for the first token only.

A BERT-family sequence classifier reads one vector: the last layer's output at token 0 ([CLS] or <s>). The
full last layer also computes, for every other token, a query, an attention output and a feed-forward pass
whose results are thrown away: with MiniLM-L6 that is ~14% of the model's FLOPs. The rewrite keeps the keys
and values of every token (token 0 still attends to all of them) and runs the rest for token 0 alone, through
the layer's own modules and weights, so the logits are the full model's; the export parity gate compares every
graph with the untouched PyTorch model.
"""

from __future__ import annotations

from torch import nn

# Model types whose sequence-classification head reads only token 0 of the last hidden state
# (BertPooler, RobertaClassificationHead, ElectraClassificationHead) and whose layers are BertLayer-shaped.
FIRST_TOKEN_HEADS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})


class FirstTokenLayer(nn.Module):
    """Wraps a BertLayer-shaped layer; returns its output for token 0 only, shape (batch, 1, hidden)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        first = hidden_states[:, :1]
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = attention_mask[:, :, :1, :]  # (batch, 1, queries, keys): keep token 0's row
        attention = self.layer.attention
        # The self-attention module's cross-attention path: queries from `first`, keys/values from all tokens.
        context = attention.self(first, attention_mask=attention_mask, encoder_hidden_states=hidden_states)[0]
        return (self.layer.feed_forward_chunk(attention.output(context, first)),)


def trim_last_layer(model: nn.Module) -> bool:
    """Replace `model`'s last encoder layer by its first-token-only form; False (model untouched) when the
    architecture is not one this rewrite is known to be exact for."""
    config = model.config
    if config.model_type not in FIRST_TOKEN_HEADS or getattr(config, "is_decoder", False):
        return False
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not layers:
        return False
    last = layers[-1]
    if isinstance(last, FirstTokenLayer):
        return True
    attention = getattr(last, "attention", None)
    if not (hasattr(attention, "self") and hasattr(attention, "output") and hasattr(last, "feed_forward_chunk")):
        return False
    layers[-1] = FirstTokenLayer(last)
    return True
