"""Parity with `transformers` (fp32, eval): last hidden state and every head's output to 1e-5,
with padded batches and attention masks, for BERT, RoBERTa and DistilBERT."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import nanoft

FAMILIES = ("bert", "roberta", "distilbert")
TOL = dict(atol=1e-5, rtol=1e-5)


def hf_inputs(family, ids, mask, types):
    kw = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        kw["token_type_ids"] = types
    return kw


def batch_for(family, make_batch):
    pad = 1 if family == "roberta" else 0
    ids, mask = make_batch([9, 4, 1, 7], vocab_size=120, pad_id=pad, seed=1)
    types = torch.zeros_like(ids)
    if family == "bert":
        types[:, 3:] = 1
        types = types * mask
    return ids, mask, types


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", [None, "classification", "token-classification", "masked-lm"])
def test_parity(family, head, tiny_checkpoints, hf_model_factory, make_batch):
    """Last hidden state (head=None) or the head's logits equal transformers' on a padded batch."""
    hf = hf_model_factory(family, head or "base")
    ours, report = nanoft.load_model(tiny_checkpoints[(family, head or "base")], head=head, num_labels=3,
                                     return_report=True)
    assert report.initialised == []  # every tensor came from the checkpoint
    ids, mask, types = batch_for(family, make_batch)
    with torch.no_grad():
        out = hf(**hf_inputs(family, ids, mask, types))
        expected = out.last_hidden_state if head is None else out.logits
        got = ours(ids, attention_mask=mask, token_type_ids=types if family == "bert" else None)
    assert_close(got, expected, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_mask_equals_all_ones_mask(family, tiny_checkpoints, make_batch):
    model = nanoft.load_model(tiny_checkpoints[(family, "classification")], num_labels=3)
    ids, _, _ = batch_for(family, make_batch)
    ids = ids.clamp(min=3)
    with torch.no_grad():
        assert_close(model(ids), model(ids, attention_mask=torch.ones_like(ids)), **TOL)


def test_new_head_is_initialised_and_reported(tiny_checkpoints):
    model, report = nanoft.load_model(tiny_checkpoints[("bert", "base")], head="classification", num_labels=5,
                                      return_report=True)
    assert {"head.out.weight", "head.out.bias"} <= set(report.initialised)
    assert model.head.out.weight.shape == (5, 32)
    assert not any(p.is_meta for p in model.parameters())
    assert 0.005 < model.head.out.weight.std().item() < 0.05  # N(0, 0.02)



@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["classification", "token-classification", "masked-lm"])
def test_parameter_counts_equal_transformers(family, head, hf_model_factory):
    """count_parameters == transformers' num_parameters (a tied MLM decoder counted once), frozen embeddings too."""
    from nanoft.config import ModelConfig
    from nanoft.models import EncoderModel, count_parameters

    hf = hf_model_factory(family, head)
    ours = EncoderModel(ModelConfig.from_hf(hf.config.to_dict()), head=head, num_labels=3)
    assert count_parameters(ours) == (hf.num_parameters(), hf.num_parameters())
    ours.encoder.embeddings.requires_grad_(False)  # for masked-lm this also freezes the tied decoder
    hf.base_model.embeddings.requires_grad_(False)
    total, trainable = count_parameters(ours)
    assert (total, trainable) == (hf.num_parameters(), hf.num_parameters(only_trainable=True))
    assert 0 < trainable < total

@pytest.mark.slow
def test_minilm_parity_on_sst2(minilm_dir, data_dir):
    """The real MiniLM checkpoint on real SST-2 dev sentences, padded batch."""
    import transformers as tf

    sentences = [line.split("\t")[0] for line in
                 (data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:17]]
    tok = nanoft.load_tokenizer(minilm_dir)
    ids, types = tok.encode_batch(sentences, max_length=128)
    T = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (T - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (T - len(row)) for row in ids])
    token_types = torch.zeros_like(input_ids)
    hf = tf.AutoModel.from_pretrained(minilm_dir).eval()
    ours = nanoft.load_model(minilm_dir, head=None)
    with torch.no_grad():
        expected = hf(input_ids=input_ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
        got = ours(input_ids, attention_mask=mask, token_type_ids=token_types)
    # Real tokens match to 1e-5; padded positions are ignored by every consumer and transformers'
    # SDPA path masks their query rows differently, so they are not compared.
    real = mask.bool()
    assert_close(got[real], expected[real], **TOL)
    hf_tok = tf.AutoTokenizer.from_pretrained(minilm_dir)
    assert ids == hf_tok(sentences, truncation=True, max_length=128)["input_ids"]
