"""The first-token-only last layer (bertbatch/trim.py): same logits as the full model, less work."""

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
)

from bertbatch.trim import FirstTokenLayer, trim_last_layer

SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             num_labels=3)
CASES = [
    (BertConfig(**SMALL), "eager"),
    (BertConfig(**SMALL), "sdpa"),
    (RobertaConfig(**SMALL), "eager"),
    (RobertaConfig(**SMALL), "sdpa"),
    (ElectraConfig(embedding_size=16, **SMALL), "eager"),
]


def _batch():
    ids = torch.randint(5, 100, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padded rows: token 0 must not attend to padding
    mask[3, 2:] = 0
    return ids, mask


@pytest.mark.parametrize("config,attention", CASES, ids=lambda c: getattr(c, "model_type", c))
def test_trimmed_model_gives_the_full_models_logits(config, attention):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attention).eval()
    ids, mask = _batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        assert trim_last_layer(model)
        trimmed = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=1e-5)


def test_trimmed_layer_runs_its_feed_forward_on_one_token():
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(BertConfig(**SMALL)).eval()
    assert trim_last_layer(model)
    shapes = {}
    last, first = model.bert.encoder.layer[-1], model.bert.encoder.layer[0]
    last.layer.intermediate.register_forward_hook(lambda m, i, o: shapes.__setitem__("last", tuple(i[0].shape)))
    first.intermediate.register_forward_hook(lambda m, i, o: shapes.__setitem__("first", tuple(i[0].shape)))
    ids, mask = _batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert shapes == {"first": (4, 9, 32), "last": (4, 1, 32)}
    assert isinstance(last, FirstTokenLayer) and trim_last_layer(model)  # idempotent


def test_unknown_architecture_is_left_alone():
    model = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3))
    before = [type(m) for m in model.modules()]
    assert not trim_last_layer(model)
    assert [type(m) for m in model.modules()] == before
