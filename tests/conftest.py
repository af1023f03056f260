"""Shared fixtures: tiny random checkpoints of the three families (made with `transformers`),
the real MiniLM checkpoint, and the shared data directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("NANOFT_DATA_DIR", REPO.parent / "shared" / "data"))

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def make_hf_model(family: str, head: str = "classification", num_labels: int = 3, **overrides):
    """A small random-weight `transformers` model of `family` with the given head, in eval mode."""
    import transformers as tf

    torch.manual_seed(0)
    if family == "bert":
        cfg = tf.BertConfig(**{**TINY, "type_vocab_size": 2, **overrides})
        classes = {"base": tf.BertModel, "classification": tf.BertForSequenceClassification,
                   "token-classification": tf.BertForTokenClassification, "masked-lm": tf.BertForMaskedLM}
    elif family == "roberta":
        cfg = tf.RobertaConfig(**{**TINY, "max_position_embeddings": 66, "type_vocab_size": 1, "pad_token_id": 1,
                                  **overrides})
        classes = {"base": tf.RobertaModel, "classification": tf.RobertaForSequenceClassification,
                   "token-classification": tf.RobertaForTokenClassification, "masked-lm": tf.RobertaForMaskedLM}
    elif family == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=64, **overrides)
        classes = {"base": tf.DistilBertModel, "classification": tf.DistilBertForSequenceClassification,
                   "token-classification": tf.DistilBertForTokenClassification,
                   "masked-lm": tf.DistilBertForMaskedLM}
    else:
        raise ValueError(family)
    cfg.num_labels = num_labels
    model = classes[head](cfg)
    # Non-trivial LayerNorm and bias values so that a wrong mapping cannot pass by accident.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """{(family, head): directory} of saved tiny HF checkpoints."""
    out = {}
    root = tmp_path_factory.mktemp("ckpt")
    for family in ("bert", "roberta", "distilbert"):
        for head in ("base", "classification", "token-classification", "masked-lm"):
            d = root / f"{family}-{head}"
            make_hf_model(family, head).save_pretrained(d, safe_serialization=True)
            out[(family, head)] = d
    return out


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from nanoft.weights import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"shared data not found at {DATA_DIR}; set NANOFT_DATA_DIR")
    return DATA_DIR


def padded_batch(lengths, vocab_size: int, pad_id: int, seed: int = 0, low: int = 3):
    """Random ids (never the pad id) right-padded to the longest; returns (ids, attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        row = torch.randint(low, vocab_size, (n,), generator=g)
        row[row == pad_id] = low
        ids[i, :n] = row
        mask[i, :n] = 1
    return ids, mask


@pytest.fixture(scope="session")
def hf_model_factory():
    return make_hf_model


@pytest.fixture(scope="session")
def make_batch():
    return padded_batch
