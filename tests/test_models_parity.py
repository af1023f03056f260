"""Parity with `transformers` (fp32, eval): last hidden state, every head's output and every parameter's gradient
to 1e-5, with padded batches and attention masks, for BERT, RoBERTa and DistilBERT."""
from __future__ import annotations

import re

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


# nanoft module -> transformers module for a sequence-classification model ({i}: layer index).
_HF_MODULES = {
    "bert-like": {
        "encoder.embeddings.word": "{p}.embeddings.word_embeddings",
        "encoder.embeddings.position": "{p}.embeddings.position_embeddings",
        "encoder.embeddings.token_type": "{p}.embeddings.token_type_embeddings",
        "encoder.embeddings.norm": "{p}.embeddings.LayerNorm",
        "encoder.layers.{i}.attention.query": "{p}.encoder.layer.{i}.attention.self.query",
        "encoder.layers.{i}.attention.key": "{p}.encoder.layer.{i}.attention.self.key",
        "encoder.layers.{i}.attention.value": "{p}.encoder.layer.{i}.attention.self.value",
        "encoder.layers.{i}.attention.output": "{p}.encoder.layer.{i}.attention.output.dense",
        "encoder.layers.{i}.attention_norm": "{p}.encoder.layer.{i}.attention.output.LayerNorm",
        "encoder.layers.{i}.ffn.intermediate": "{p}.encoder.layer.{i}.intermediate.dense",
        "encoder.layers.{i}.ffn.output": "{p}.encoder.layer.{i}.output.dense",
        "encoder.layers.{i}.ffn_norm": "{p}.encoder.layer.{i}.output.LayerNorm",
    },
    "distilbert": {
        "encoder.embeddings.word": "distilbert.embeddings.word_embeddings",
        "encoder.embeddings.position": "distilbert.embeddings.position_embeddings",
        "encoder.embeddings.norm": "distilbert.embeddings.LayerNorm",
        "encoder.layers.{i}.attention.query": "distilbert.transformer.layer.{i}.attention.q_lin",
        "encoder.layers.{i}.attention.key": "distilbert.transformer.layer.{i}.attention.k_lin",
        "encoder.layers.{i}.attention.value": "distilbert.transformer.layer.{i}.attention.v_lin",
        "encoder.layers.{i}.attention.output": "distilbert.transformer.layer.{i}.attention.out_lin",
        "encoder.layers.{i}.attention_norm": "distilbert.transformer.layer.{i}.sa_layer_norm",
        "encoder.layers.{i}.ffn.intermediate": "distilbert.transformer.layer.{i}.ffn.lin1",
        "encoder.layers.{i}.ffn.output": "distilbert.transformer.layer.{i}.ffn.lin2",
        "encoder.layers.{i}.ffn_norm": "distilbert.transformer.layer.{i}.output_layer_norm",
    },
}
_HF_HEADS = {"bert": {"head.dense": "bert.pooler.dense", "head.out": "classifier"},
             "roberta": {"head.dense": "classifier.dense", "head.out": "classifier.out_proj"},
             "distilbert": {"head.dense": "pre_classifier", "head.out": "classifier"}}


def hf_parameter_name(name: str, family: str) -> str:
    """transformers' name of nanoft parameter `name` (e.g. encoder.layers.1.ffn_norm.bias)."""
    module, leaf = name.rsplit(".", 1)
    layer = re.match(r"encoder\.layers\.(\d+)\.", module)
    i = layer.group(1) if layer else None
    pattern = module.replace(f"encoder.layers.{i}.", "encoder.layers.{i}.") if layer else module
    table = {**_HF_MODULES["distilbert" if family == "distilbert" else "bert-like"], **_HF_HEADS[family]}
    return table[pattern].format(p=family, i=i) + "." + leaf


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_parity(family, hf_model_factory, make_batch, tmp_path):
    """One backward of the same cross-entropy on a padded batch gives transformers' gradient for every
    parameter (fp32, eval mode: no dropout), to 1e-5 absolute and to 1e-5 of that tensor's largest gradient.

    Initialised with std 0.2 (not 0.02) so attention is far from uniform and every gradient is large
    enough for the comparison to mean something. Names are mapped by the table above (written here, not
    nanoft's key map), and the mapping must cover every transformers parameter exactly once."""
    hf = hf_model_factory(family, "classification", initializer_range=0.2)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = nanoft.load_model(tmp_path, num_labels=3).eval()
    ids, mask, types = batch_for(family, make_batch)
    labels = torch.tensor([0, 2, 1, 2])
    torch.nn.functional.cross_entropy(hf(**hf_inputs(family, ids, mask, types)).logits, labels).backward()
    logits = ours(ids, attention_mask=mask, token_type_ids=types if family == "bert" else None)
    torch.nn.functional.cross_entropy(logits, labels).backward()

    theirs = dict(hf.named_parameters())
    names = {name: hf_parameter_name(name, family) for name, _ in ours.named_parameters()}
    assert sorted(names.values()) == sorted(theirs)  # a bijection: no parameter is left uncompared
    for name, p in ours.named_parameters():
        expected = theirs[names[name]].grad
        scale = expected.abs().max().item()
        if name.endswith("attention.key.bias"):
            # softmax ignores a constant added to every score of a row, so this gradient is zero in exact
            # arithmetic: both are float round-off
            assert scale < 1e-6 and p.grad.abs().max() < 1e-6, name
            continue
        assert scale > 1e-3, name  # a real gradient, not a parameter the loss does not reach
        assert_close(p.grad, expected, atol=1e-5 * min(1.0, scale), rtol=0, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_mask_equals_all_ones_mask(family, tiny_checkpoints, hf_model_factory, make_batch):
    """No mask and an all-ones mask each give transformers' logits (an independent implementation)."""
    model = nanoft.load_model(tiny_checkpoints[(family, "classification")], num_labels=3)
    hf = hf_model_factory(family, "classification")
    ids, _, _ = batch_for(family, make_batch)
    ids = ids.clamp(min=3)
    ones = torch.ones_like(ids)
    with torch.no_grad():
        expected_none, expected_ones = hf(input_ids=ids).logits, hf(input_ids=ids, attention_mask=ones).logits
        assert_close(model(ids), expected_none, **TOL)
        assert_close(model(ids, attention_mask=ones), expected_ones, **TOL)
        assert_close(expected_none, expected_ones, **TOL)


def naive_attention(q, k, v, allowed=None):
    """softmax(q k^T / sqrt(d)) v written out; `allowed` (broadcastable bool, True = may attend) masks keys."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (batch, heads, seq_q, seq_k)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_full_attention_without_and_with_an_empty_padding_mask_is_naive_softmax():
    """The attention core, with no key_padding_mask and with an all-False one (the masked path, which the
    model skips for full batches), equals the naive formula; a real padding mask too."""
    from nanoft.attention import build

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, generator=g) for _ in range(3))
    core = build("full", num_heads=4, head_dim=8, max_length=16).eval()
    expected = naive_attention(q, k, v)
    no_padding = torch.zeros(2, 7, dtype=torch.bool)
    assert_close(core(q, k, v), expected, **TOL)
    assert_close(core(q, k, v, key_padding_mask=no_padding), expected, **TOL)
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    expected_padded = naive_attention(q, k, v, allowed=~padding[:, None, None, :])
    assert_close(core(q, k, v, key_padding_mask=padding), expected_padded, **TOL)
    assert (expected_padded - expected)[1].abs().max() > 1e-2  # the padding mask matters for row 1


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

def _minilm_batch(tok, data_dir, kind):
    """Real dev examples as a right-padded batch: SST-2 single sentences or RTE sentence pairs."""
    rows = [line.split("\t") for line in
            (data_dir / kind / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:17]]
    texts = [r[0] for r in rows]
    pairs = [r[1] for r in rows] if kind == "rte" else None
    ids, types = tok.encode_batch(texts, pairs, max_length=128)
    T = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (T - len(row)) for row in ids])
    token_types = torch.tensor([row + [0] * (T - len(row)) for row in types])
    mask = torch.tensor([[1] * len(row) + [0] * (T - len(row)) for row in ids])
    return texts, pairs, ids, types, input_ids, token_types, mask


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sst2", "rte"])
def test_minilm_parity_on_real_dev_batches(kind, minilm_dir, data_dir):
    """The real MiniLM checkpoint on real dev examples (SST-2 sentences; RTE sentence pairs, with token
    types), padded batch: every position matches transformers, padded query rows included.

    transformers' SDPA mask hides padded keys only, so padded query rows attend to the real keys, as ours
    do: the two compute the same function there. In float64 every row agrees to 1e-10. In float32 real rows
    agree to 1e-5; padded rows are compared at 1e-4, because their hidden states are ill-conditioned in
    float32 (a pad token far from its sentence): on the SST-2 batch transformers' own float32 hidden states
    differ from its float64 ones by up to 4.5e-5 on those rows, ours by 5.3e-5 (transformers 5.x)."""
    import transformers as tf

    tok = nanoft.load_tokenizer(minilm_dir)
    texts, pairs, ids, types, input_ids, token_types, mask = _minilm_batch(tok, data_dir, kind)
    assert (mask == 0).any() and (kind != "rte" or (token_types == 1).any())
    hf = tf.AutoModel.from_pretrained(minilm_dir).eval()
    ours = nanoft.load_model(minilm_dir, head=None).eval()
    real = mask.bool()
    for dtype, tol_real, tol_padded in ((torch.float32, 1e-5, 1e-4), (torch.float64, 1e-10, 1e-10)):
        hf, ours = hf.to(dtype), ours.to(dtype)
        with torch.no_grad():
            expected = hf(input_ids=input_ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
            got = ours(input_ids, attention_mask=mask, token_type_ids=token_types)
        assert got.dtype == dtype
        assert_close(got[real], expected[real], atol=tol_real, rtol=tol_real)
        assert_close(got[~real], expected[~real], atol=tol_padded, rtol=tol_padded)
    hf_tok = tf.AutoTokenizer.from_pretrained(minilm_dir)
    expected_enc = hf_tok(texts, pairs, truncation=True, max_length=128)
    assert ids == expected_enc["input_ids"]
    assert types == expected_enc["token_type_ids"]
