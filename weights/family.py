"""Model families: one `Family` record holds everything nanoft knows about BERT, RoBERTa or DistilBERT.

The encoder is the same for all of them; what differs is bookkeeping — the names in config.json,
the tensor names in checkpoints, the class names `transformers` reads back, a few head details and
the tokenizer. Each family writes those down once, here, and `nanoft.config`, the key map, the
checkpoint loader, the heads and the tokenizer read them. Adding a family with the same encoder
(ELECTRA's discriminator, a renamed RoBERTa) is one `register_family(Family(...))` call.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from nanoft.config import ACTIVATIONS, REQUIRED, ModelConfig
from nanoft.errors import CheckpointError, ConfigError

Pairs = Tuple[Tuple[str, str], ...]  # (nanoft name, Hugging Face name)

# ModelConfig field → config.json key.
BERT_CONFIG_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size", "activation": "hidden_act",
    "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps", "hidden_dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob", "classifier_dropout": "classifier_dropout",
    "pad_token_id": "pad_token_id",
}
DISTILBERT_CONFIG_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "dim", "num_layers": "n_layers", "num_heads": "n_heads",
    "intermediate_size": "hidden_dim", "activation": "activation",
    "max_position_embeddings": "max_position_embeddings", "hidden_dropout": "dropout",
    "attention_dropout": "attention_dropout", "classifier_dropout": "seq_classif_dropout",
    "pad_token_id": "pad_token_id",
}

# Module names, relative to the base-model prefix; `{i}` is the layer index.
EMBEDDING_KEYS: Pairs = (
    ("encoder.embeddings.word", "embeddings.word_embeddings"),
    ("encoder.embeddings.position", "embeddings.position_embeddings"),
    ("encoder.embeddings.token_type", "embeddings.token_type_embeddings"),
    ("encoder.embeddings.norm", "embeddings.LayerNorm"),
)
BERT_LAYER_KEYS: Pairs = (
    ("encoder.layers.{i}.attention.query", "encoder.layer.{i}.attention.self.query"),
    ("encoder.layers.{i}.attention.key", "encoder.layer.{i}.attention.self.key"),
    ("encoder.layers.{i}.attention.value", "encoder.layer.{i}.attention.self.value"),
    ("encoder.layers.{i}.attention.output", "encoder.layer.{i}.attention.output.dense"),
    ("encoder.layers.{i}.attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    ("encoder.layers.{i}.ffn.intermediate", "encoder.layer.{i}.intermediate.dense"),
    ("encoder.layers.{i}.ffn.output", "encoder.layer.{i}.output.dense"),
    ("encoder.layers.{i}.ffn_norm", "encoder.layer.{i}.output.LayerNorm"),
)
DISTILBERT_LAYER_KEYS: Pairs = (
    ("encoder.layers.{i}.attention.query", "transformer.layer.{i}.attention.q_lin"),
    ("encoder.layers.{i}.attention.key", "transformer.layer.{i}.attention.k_lin"),
    ("encoder.layers.{i}.attention.value", "transformer.layer.{i}.attention.v_lin"),
    ("encoder.layers.{i}.attention.output", "transformer.layer.{i}.attention.out_lin"),
    ("encoder.layers.{i}.attention_norm", "transformer.layer.{i}.sa_layer_norm"),
    ("encoder.layers.{i}.ffn.intermediate", "transformer.layer.{i}.ffn.lin1"),
    ("encoder.layers.{i}.ffn.output", "transformer.layer.{i}.ffn.lin2"),
    ("encoder.layers.{i}.ffn_norm", "transformer.layer.{i}.output_layer_norm"),
)
TOKEN_CLASSIFIER: Pairs = (("head.out", "classifier"),)  # the same in every family
TOKENIZERS = ("wordpiece", "bpe")

# The `transformers` class for each head kind is the family's stem plus this.
HF_CLASS_SUFFIX = {None: "Model", "classification": "ForSequenceClassification",
                   "regression": "ForSequenceClassification", "token-classification": "ForTokenClassification",
                   "masked-lm": "ForMaskedLM"}


@dataclass(frozen=True)
class Family:
    """What one model family's checkpoints, heads and tokenizer look like."""

    name: str  # ModelConfig.family
    model_types: Tuple[str, ...]  # config.json `model_type` values read as this family; the first is written
    architecture: str  # stem of the `transformers` class names: "Bert" → BertForSequenceClassification
    prefixes: Tuple[str, ...]  # base-model prefix of tensor names when a head is present; the first is written
    config_keys: Mapping[str, str]  # ModelConfig field → config.json key
    layer_keys: Pairs  # encoder layer modules (nanoft, HF)
    # Head kind → (nanoft, HF) names. HF names are absolute; "@" means "inside the prefix". A later pair
    # for the same nanoft tensor is another name HF writes for it: read if present, never written.
    heads: Mapping[str, Pairs]
    head_activation: str  # classification head: tanh (BERT's pooler, RoBERTa), relu (DistilBERT)
    tokenizer: str  # without tokenizer.json: "wordpiece" (vocab.txt) or "bpe" (vocab.json + merges.txt)
    # ModelConfig values for keys config.json lacks, where they differ from ModelConfig's own defaults;
    # also written for a value left at None.
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    embedding_keys: Pairs = EMBEDDING_KEYS
    dropout_before_dense: bool = False  # RoBERTa's classification head also drops out the first token
    mlm_activation: Optional[str] = None  # masked-LM head's activation; None: the encoder's
    mlm_decoder: Optional[str] = None  # HF name of the MLM output weight (tied to the word embeddings), saved only
    positions_after_pad: bool = False  # RoBERTa: position ids count from pad_token_id + 1
    one_token_type: bool = False  # RoBERTa: token-type ids are all 0 (its pair processor may still emit 1s)
    skipped: Tuple[str, ...] = ()  # regexes: tensors of heads nanoft does not build (prefix stripped)

    @property
    def has_pooler(self) -> bool:
        """The classification head's dense layer is the checkpoint's pretrained pooler (BERT), not a new layer."""
        return ("head.dense", "@pooler.dense") in self.heads.get("classification", ())

    def hf_class(self, head: Optional[str]) -> str:
        """The `transformers` class name written to config.json `architectures` for a model with `head`."""
        return self.architecture + HF_CLASS_SUFFIX[head]


BERT = Family(
    name="bert", model_types=("bert",), architecture="Bert", prefixes=("bert",),
    config_keys=BERT_CONFIG_KEYS, layer_keys=BERT_LAYER_KEYS,
    heads={"classification": (("head.dense", "@pooler.dense"), ("head.out", "classifier")),
           "token-classification": TOKEN_CLASSIFIER,
           "masked-lm": (("head.dense", "cls.predictions.transform.dense"),
                         ("head.norm", "cls.predictions.transform.LayerNorm"),
                         ("head.bias", "cls.predictions.bias"), ("head.bias", "cls.predictions.decoder.bias"))},
    mlm_decoder="cls.predictions.decoder.weight", head_activation="tanh", tokenizer="wordpiece",
    skipped=(r"cls\..*",),
)
ROBERTA = Family(
    name="roberta", model_types=("roberta", "xlm-roberta", "camembert"), architecture="Roberta",
    prefixes=("roberta",), config_keys=BERT_CONFIG_KEYS, layer_keys=BERT_LAYER_KEYS,
    heads={"classification": (("head.dense", "classifier.dense"), ("head.out", "classifier.out_proj")),
           "token-classification": TOKEN_CLASSIFIER,
           "masked-lm": (("head.dense", "lm_head.dense"), ("head.norm", "lm_head.layer_norm"),
                         ("head.bias", "lm_head.bias"), ("head.bias", "lm_head.decoder.bias"))},
    mlm_decoder="lm_head.decoder.weight", head_activation="tanh", dropout_before_dense=True,
    mlm_activation="gelu", tokenizer="bpe", config_defaults={"pad_token_id": 1}, positions_after_pad=True,
    one_token_type=True, skipped=(r"lm_head\..*",),
)
DISTILBERT = Family(
    name="distilbert", model_types=("distilbert",), architecture="DistilBert", prefixes=("distilbert",),
    config_keys=DISTILBERT_CONFIG_KEYS, layer_keys=DISTILBERT_LAYER_KEYS,
    heads={"classification": (("head.dense", "pre_classifier"), ("head.out", "classifier")),
           "token-classification": TOKEN_CLASSIFIER,
           "masked-lm": (("head.dense", "vocab_transform"), ("head.norm", "vocab_layer_norm"),
                         ("head.bias", "vocab_projector.bias"))},
    mlm_decoder="vocab_projector.weight", head_activation="relu", tokenizer="wordpiece",
    # no token types; 6 layers and its own classifier dropout unless config.json says otherwise
    config_defaults={"num_layers": 6, "type_vocab_size": 0, "classifier_dropout": 0.2},
    skipped=(r"pre_classifier\..*", r"vocab_transform\..*", r"vocab_layer_norm\..*", r"vocab_projector\..*"),
)

FAMILIES: Dict[str, Family] = {f.name: f for f in (BERT, ROBERTA, DISTILBERT)}


def _check(family: Family) -> None:
    """A record that names an unknown ModelConfig field, activation, head or tokenizer fails here, not at load."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    problems = [f"{name!r} is not a ModelConfig field"
                for name in sorted((set(family.config_keys) | set(family.config_defaults)) - fields)]
    problems += [f"config_keys lacks required {name!r}" for name in REQUIRED if name not in family.config_keys]
    problems += [f"unknown activation {act!r}" for act in (family.head_activation, family.mlm_activation)
                 if act is not None and act not in ACTIVATIONS]
    problems += [f"unknown head kind {kind!r}" for kind in family.heads  # regression uses classification's
                 if kind not in HF_CLASS_SUFFIX or kind in (None, "regression")]
    if family.tokenizer not in TOKENIZERS:
        problems.append(f"tokenizer must be one of {', '.join(TOKENIZERS)}, not {family.tokenizer!r}")
    if problems:
        raise ConfigError(f"model family {family.name!r}: {'; '.join(problems)}")


def register_family(family: Family) -> Family:
    """Add a family; its name and model_types must be new and its record complete."""
    _check(family)
    if family.name in FAMILIES:
        raise ConfigError(f"model family {family.name!r} is already registered",
                          fix="pick another name, or unregister_family() the old one first")
    for other in FAMILIES.values():
        taken = set(family.model_types) & set(other.model_types)
        if taken:
            raise ConfigError(f"model_type {sorted(taken)[0]!r} already belongs to family {other.name!r}")
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> Family:
    """Remove a family added with `register_family` (and return it)."""
    family = get_family(name)
    del FAMILIES[name]
    return family


def get_family(name: str) -> Family:
    """The registered family called `name`."""
    if name not in FAMILIES:
        near = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise CheckpointError(f"unknown model family {name!r}", fix=f"{hint}use one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def find_family(hf: Mapping[str, Any]) -> Optional[Family]:
    """The family a config.json belongs to: by `model_type`, or without one by its `architectures`."""
    model_type = hf.get("model_type")
    if model_type is not None:
        return next((f for f in FAMILIES.values() if model_type in f.model_types), None)
    names = hf.get("architectures")
    classes = " ".join(n for n in names if isinstance(n, str)).lower() if isinstance(names, list) else ""
    found = [f for f in FAMILIES.values() if f.architecture.lower() in classes]
    # "DistilBertModel" and "RobertaModel" also contain "bert": the longest stem is the family
    return max(found, key=lambda f: len(f.architecture), default=None)


__all__ = ["Family", "FAMILIES", "register_family", "unregister_family", "get_family", "find_family",
           "BERT_CONFIG_KEYS", "DISTILBERT_CONFIG_KEYS", "EMBEDDING_KEYS", "BERT_LAYER_KEYS", "DISTILBERT_LAYER_KEYS",
           "TOKEN_CLASSIFIER"]
