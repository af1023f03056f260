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


# ------------------------------------------------------------------ a tiny task for the trainer
WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "movie", "was", "plot", "acting", "very",
         "not", "really", "a", "an", "film", "story", "so", "quite"]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Encoding caches of the test session go to a temp folder, not ~/.cache."""
    os.environ["NANOFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("nanoft-cache"))


def _write_tiny_task(directory: Path, n_train: int = 96, n_dev: int = 32, seed: int = 0) -> None:
    """Sentences whose label is 1 iff they contain a positive word: learnable in a few steps."""
    import random

    rng = random.Random(seed)
    positive, negative = WORDS[:3], WORDS[3:6]
    fillers = WORDS[6:]

    def rows(n):
        out = []
        for i in range(n):
            label = i % 2
            words = [rng.choice(fillers) for _ in range(rng.randint(2, 12))]
            words.insert(rng.randint(0, len(words)), rng.choice(positive if label else negative))
            out.append(f"{' '.join(words)}\t{label}")
        return out

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.tsv").write_text("text\tlabel\n" + "\n".join(rows(n_train)) + "\n", encoding="utf-8")
    (directory / "dev.tsv").write_text("text\tlabel\n" + "\n".join(rows(n_dev)) + "\n", encoding="utf-8")


def _write_tiny_model(directory: Path, dropout: float) -> None:
    import nanoft
    from nanoft.models import EncoderModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    config = nanoft.ModelConfig(family="bert", vocab_size=len(vocab), hidden_size=32, num_layers=2, num_heads=4,
                                intermediate_size=64, max_position_embeddings=64, hidden_dropout=dropout,
                                attention_dropout=dropout)
    torch.manual_seed(0)
    model = EncoderModel(config, head="classification", num_labels=2).init_weights()
    nanoft.save_model(model, directory)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory):
    """{'data': folder with train.tsv/dev.tsv, 'model': tiny BERT (dropout 0.1), 'model_nodrop': dropout 0}."""
    root = tmp_path_factory.mktemp("tiny-task")
    _write_tiny_task(root / "data")
    _write_tiny_model(root / "model", dropout=0.1)
    _write_tiny_model(root / "model_nodrop", dropout=0.0)
    return {"data": root / "data", "model": root / "model", "model_nodrop": root / "model_nodrop"}


@pytest.fixture
def tiny_config(tiny_task, tmp_path):
    """A TrainConfig factory on the tiny task; runs go under tmp_path."""
    from nanoft.train import TrainConfig

    def make(**overrides):
        values = dict(train_file=str(tiny_task["data"] / "train.tsv"), dev_file=str(tiny_task["data"] / "dev.tsv"),
                      text_columns=["text"], label_column="label", model=str(tiny_task["model"]),
                      batch_size=8, epochs=2, lr=3e-3, max_length=32, output=str(tmp_path / "run"), quiet=True,
                      log_every=1, seed=0, precision="fp32")
        values.update(overrides)
        return TrainConfig(**values)

    return make


@pytest.fixture(scope="session")
def glue_like_data(tmp_path_factory):
    """sst2/ and cola/ folders of tiny sentences (label 1 iff a positive word) in the shared data's columns, for
    the tiny model's vocabulary: what task-level benchmarks (parity, TAPT) run on in tests."""
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("glue-like-data")

    def rows(n):
        out = []
        for i in range(n):
            words = list(rng.choice(WORDS[6:], size=int(rng.integers(2, 12))))
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(WORDS[:3] if i % 2 else WORDS[3:6])))
            out.append(f"{' '.join(words)}\t{i % 2}")
        return out

    for task in ("sst2", "cola"):
        (root / task).mkdir()
        for split, n in (("train", 64), ("dev", 40)):
            (root / task / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows(n)) + "\n", encoding="utf-8")
    return root
