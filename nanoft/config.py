"""ModelConfig: the one description of an encoder, whatever its family.

BERT, RoBERTa and DistilBERT are the same post-LayerNorm transformer encoder; they differ only
in a handful of numbers and switches (token types or not, where position ids start, which
activation). Those live here, so the model code has no per-family branches beyond reading them.
What each family calls them in config.json is in its `Family` record (`nanoft.weights.family`),
imported inside the methods because `nanoft.weights` itself imports this module.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from nanoft.errors import CheckpointError, ConfigError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "tanh")
REQUIRED = ("vocab_size",)  # never guessed from a default when reading config.json


@dataclass
class ModelConfig:
    family: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    activation: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0: no token-type embedding (DistilBERT)
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: Optional[float] = None  # None: use hidden_dropout
    pad_token_id: int = 0
    # RoBERTa counts positions from pad_token_id + 1 and gives padding the pad position.
    position_offset: int = 0
    attention: str = "full"
    attention_options: Dict[str, Any] = field(default_factory=dict)
    # Run the encoder on packed real tokens, padding dropped once after the embeddings (full attention only;
    # other kinds keep the padded path). None: where it was measured faster (`nanoft.models.encoder.
    # unpad_by_default`). A run-time choice, not written to config.json.
    unpad: Optional[bool] = None
    # Everything else found in config.json, written back on save so nothing is lost.
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_length(self) -> int:
        """Longest input the position table allows."""
        return self.max_position_embeddings - self.position_offset

    def __post_init__(self) -> None:
        from nanoft.weights.family import get_family

        get_family(self.family)  # an unknown family is an error here, not at load time
        _check_values(self)
        if self.hidden_size % self.num_heads:
            raise CheckpointError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.unpad is not None and not isinstance(self.unpad, bool):
            raise ConfigError(f"unpad must be True, False or None (auto), got {self.unpad!r}")
        if self.activation not in ACTIVATIONS:
            raise CheckpointError(f"unsupported activation {self.activation!r}",
                                  fix=f"use one of {', '.join(ACTIVATIONS)}")

    # ----------------------------------------------------------------- HF config.json
    @classmethod
    def from_hf(cls, hf: Dict[str, Any], path: Optional[str] = None) -> "ModelConfig":
        """Read a Hugging Face config.json dict of any registered family (names from its `Family` record)."""
        from nanoft.weights.family import FAMILIES, find_family

        family = find_family(hf)
        if family is None:
            raise CheckpointError(f"unsupported model_type {hf.get('model_type')!r}", path=path,
                                  fix=f"nanoft loads {', '.join(FAMILIES)} checkpoints")
        values = {**family.config_defaults,
                  **{name: hf[key] for name, key in family.config_keys.items() if key in hf}}
        for name in REQUIRED:
            if name not in values:
                raise CheckpointError(f"config.json lacks required key {family.config_keys[name]!r}", path=path)
        if values.get("pad_token_id", 0) is None:
            del values["pad_token_id"]  # null: ModelConfig's default
        cfg = cls(family=family.name, **values)
        if family.positions_after_pad:
            cfg.position_offset = cfg.pad_token_id + 1
        known = {"model_type", *family.config_keys.values()}
        cfg.extra = {k: v for k, v in hf.items() if k not in known}
        nanoft_extra = cfg.extra.pop("nanoft", None)
        if isinstance(nanoft_extra, dict):
            cfg.attention = nanoft_extra.get("attention", "full")
            options = nanoft_extra.get("attention_options", {})
            cfg.attention_options = dict(options) if isinstance(options, dict) else options  # checked by from_file
        return cfg

    def to_hf(self) -> Dict[str, Any]:
        """The config.json `transformers` reads back (plus a `nanoft` block for our own settings)."""
        from nanoft.weights.family import get_family

        family = get_family(self.family)
        hf: Dict[str, Any] = {"model_type": family.model_types[0]}
        for name, key in family.config_keys.items():
            value = getattr(self, name)
            hf[key] = family.config_defaults.get(name) if value is None else value
        out = {**self.extra, **hf}
        if self.attention != "full" or self.attention_options:
            out["nanoft"] = {"attention": self.attention, "attention_options": self.attention_options}
        return out

    @classmethod
    def from_file(cls, path: "str | Path") -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError("config.json not found", path=str(path),
                                  fix="point to a Hugging Face model directory with config.json + model.safetensors")
        try:
            hf = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            line = getattr(e, "lineno", None)
            raise CheckpointError(f"config.json is not valid JSON ({e.__class__.__name__})", path=str(path),
                                  line=line, fix="repair or re-export the checkpoint") from None
        if not isinstance(hf, dict):
            raise CheckpointError("config.json must hold a JSON object", path=str(path))
        try:
            config = cls.from_hf(hf, path=str(path))
            _check_loaded(config)
        except CheckpointError as e:
            if e.path is not None:
                raise
            raise CheckpointError(e.message, path=str(path), fix=e.fix) from None
        return config

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


MIN_SIZES = {"vocab_size": 1, "hidden_size": 1, "num_layers": 1, "num_heads": 1, "intermediate_size": 1,
            "max_position_embeddings": 1, "type_vocab_size": 0, "pad_token_id": 0, "position_offset": 0}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_values(config: ModelConfig) -> None:
    """Sizes are integers, rates probabilities: a bad config.json value is one error here, not a crash in torch."""
    fix = "repair the value in config.json"
    for name, low in MIN_SIZES.items():
        value = getattr(config, name)
        if not _is_int(value) or value < low:
            raise CheckpointError(f"{name} must be an integer >= {low}, got {value!r}", fix=fix)
    if config.pad_token_id >= config.vocab_size:
        raise CheckpointError(f"pad_token_id {config.pad_token_id} is outside the vocabulary of {config.vocab_size}",
                              fix=fix)
    for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
        value = getattr(config, name)
        if not (value is None and name == "classifier_dropout") and not (
                isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1):
            raise CheckpointError(f"{name} must be a probability in [0, 1), got {value!r}", fix=fix)
    eps = config.layer_norm_eps
    if not (isinstance(eps, numbers.Real) and not isinstance(eps, bool) and 0 < eps < 1):
        raise CheckpointError(f"layer_norm_eps must be a small positive number, got {eps!r}", fix=fix)


def _check_loaded(config: ModelConfig) -> None:
    """What loading reads from config.json beyond the sizes: the nanoft block, num_labels and id2label."""
    fix = "repair the value in config.json"
    if not isinstance(config.attention, str) or not isinstance(config.attention_options, dict):
        raise CheckpointError(f"nanoft.attention must be a name and nanoft.attention_options an object, got "
                              f"{config.attention!r} and {config.attention_options!r}", fix=fix)
    num_labels, id2label = config.extra.get("num_labels"), config.extra.get("id2label")
    if num_labels is not None and not (_is_int(num_labels) and num_labels >= 1):
        raise CheckpointError(f"num_labels must be an integer >= 1, got {num_labels!r}", fix=fix)
    if id2label is not None and not isinstance(id2label, dict):
        raise CheckpointError(f"id2label must be an object, got {id2label!r}", fix=fix)
