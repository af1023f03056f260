"""Model families: a fourth family is one `register_family` call (ELECTRA's discriminator, checked
against `transformers`), registering is checked and undone, and the records' facts match `transformers`."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import nanoft
from nanoft.errors import CheckpointError, ConfigError
from nanoft.weights.family import (BERT_CONFIG_KEYS, BERT_LAYER_KEYS, FAMILIES, TOKEN_CLASSIFIER, Family, get_family,
                                   register_family, unregister_family)

TOL = dict(atol=1e-5, rtol=1e-5)

# ELECTRA's discriminator is BERT's encoder under its own prefix, with RoBERTa-style classification
# head names but GELU in the head. (Its `embedding_size` must equal `hidden_size`: no projection layer.)
ELECTRA = Family(
    name="electra", model_types=("electra",), architecture="Electra", prefixes=("electra",),
    config_keys=BERT_CONFIG_KEYS, layer_keys=BERT_LAYER_KEYS,
    heads={"classification": (("head.dense", "classifier.dense"), ("head.out", "classifier.out_proj")),
           "token-classification": TOKEN_CLASSIFIER},
    head_activation="gelu", dropout_before_dense=True, tokenizer="wordpiece",
    skipped=(r"discriminator_predictions\..*",),
)


@pytest.fixture
def electra():
    """ELECTRA registered for one test only."""
    register_family(ELECTRA)
    try:
        yield ELECTRA
    finally:
        unregister_family("electra")


def tiny_electra(head: str):
    import transformers as tf

    cfg = tf.ElectraConfig(vocab_size=120, embedding_size=32, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    model = {"base": tf.ElectraModel, "classification": tf.ElectraForSequenceClassification}[head](cfg)
    with torch.no_grad():  # non-trivial LayerNorm and biases, so a wrong mapping cannot pass by accident
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def electra_batch(make_batch):
    ids, mask = make_batch([9, 4, 1, 7], vocab_size=120, pad_id=0, seed=1)
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    return ids, mask, types * mask


def test_registered_family_loads_with_parity(electra, tmp_path, make_batch):
    """Hidden states and classification logits of an ELECTRA checkpoint equal transformers' (fp32, eval)."""
    ids, mask, types = electra_batch(make_batch)
    for head in ("base", "classification"):
        hf = tiny_electra(head)
        hf.save_pretrained(tmp_path / head, safe_serialization=True)
        ours, report = nanoft.load_model(tmp_path / head, head=None if head == "base" else head, return_report=True)
        assert ours.config.family == "electra" and report.initialised == []
        with torch.no_grad():
            out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
            expected = out.last_hidden_state if head == "base" else out.logits
            assert_close(ours(ids, attention_mask=mask, token_type_ids=types), expected, **TOL)


def test_registered_family_saves_for_transformers(electra, tmp_path, make_batch):
    """What nanoft saves for the new family is an ELECTRA checkpoint transformers reads, tensor for tensor."""
    import transformers as tf

    original = tiny_electra("classification")
    original.save_pretrained(tmp_path / "src", safe_serialization=True)
    nanoft.save_model(nanoft.load_model(tmp_path / "src"), tmp_path / "saved")
    reread = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert type(reread).__name__ == "ElectraForSequenceClassification"
    theirs = reread.state_dict()
    for k, v in original.state_dict().items():
        assert torch.equal(theirs[k], v), k


def test_unregistered_family_is_an_error():
    """Nothing leaks from a registering test: ELECTRA is unknown again, by name and by model_type."""
    assert "electra" not in FAMILIES
    with pytest.raises(CheckpointError, match="unknown model family 'electra'"):
        nanoft.ModelConfig(family="electra")
    with pytest.raises(CheckpointError, match="unsupported model_type 'electra'"):
        nanoft.ModelConfig.from_hf({"model_type": "electra", "vocab_size": 10})


def test_register_rejects_a_taken_name_or_model_type_or_a_bad_record():
    import dataclasses

    before = dict(FAMILIES)
    with pytest.raises(ConfigError, match="'bert' is already registered"):
        register_family(dataclasses.replace(ELECTRA, name="bert"))
    with pytest.raises(ConfigError, match="model_type 'xlm-roberta' already belongs to family 'roberta'"):
        register_family(dataclasses.replace(ELECTRA, model_types=("electra", "xlm-roberta")))
    with pytest.raises(ConfigError, match="'hidden_dim' is not a ModelConfig field; unknown activation 'swish'"):
        register_family(dataclasses.replace(ELECTRA, config_keys={**BERT_CONFIG_KEYS, "hidden_dim": "dim"},
                                            head_activation="swish"))
    assert FAMILIES == before


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_has_pooler_matches_transformers(family, hf_model_factory):
    """Only BERT's classifier sits on a pretrained pooler (what re-init must treat as a top layer)."""
    hf = hf_model_factory(family, "classification")
    base = getattr(hf, hf.base_model_prefix)
    assert get_family(family).has_pooler == (getattr(base, "pooler", None) is not None)
