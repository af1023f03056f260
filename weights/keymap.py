"""Names of tensors: nanoft's module tree ↔ Hugging Face checkpoints, per family.

nanoft names what things are (`encoder.layers.3.attention.query`); Hugging Face checkpoints
use each family's historical names (`bert.encoder.layer.3.attention.self.query`,
`distilbert.transformer.layer.3.attention.q_lin`). One table per family translates a nanoft
name into the canonical HF name; loading inverts it after normalising legacy spellings
(`gamma`/`beta`, with or without the `bert.`/`roberta.`/`distilbert.` prefix).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

PREFIX = {"bert": "bert", "roberta": "roberta", "distilbert": "distilbert"}

# (nanoft pattern, HF pattern) — `{i}` is the layer index; the HF side is relative to the base prefix.
_LAYER_BERT = [
    ("encoder.layers.{i}.attention.query", "encoder.layer.{i}.attention.self.query"),
    ("encoder.layers.{i}.attention.key", "encoder.layer.{i}.attention.self.key"),
    ("encoder.layers.{i}.attention.value", "encoder.layer.{i}.attention.self.value"),
    ("encoder.layers.{i}.attention.output", "encoder.layer.{i}.attention.output.dense"),
    ("encoder.layers.{i}.attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    ("encoder.layers.{i}.ffn.intermediate", "encoder.layer.{i}.intermediate.dense"),
    ("encoder.layers.{i}.ffn.output", "encoder.layer.{i}.output.dense"),
    ("encoder.layers.{i}.ffn_norm", "encoder.layer.{i}.output.LayerNorm"),
]
_LAYER_DISTILBERT = [
    ("encoder.layers.{i}.attention.query", "transformer.layer.{i}.attention.q_lin"),
    ("encoder.layers.{i}.attention.key", "transformer.layer.{i}.attention.k_lin"),
    ("encoder.layers.{i}.attention.value", "transformer.layer.{i}.attention.v_lin"),
    ("encoder.layers.{i}.attention.output", "transformer.layer.{i}.attention.out_lin"),
    ("encoder.layers.{i}.attention_norm", "transformer.layer.{i}.sa_layer_norm"),
    ("encoder.layers.{i}.ffn.intermediate", "transformer.layer.{i}.ffn.lin1"),
    ("encoder.layers.{i}.ffn.output", "transformer.layer.{i}.ffn.lin2"),
    ("encoder.layers.{i}.ffn_norm", "transformer.layer.{i}.output_layer_norm"),
]
_EMBEDDINGS = [
    ("encoder.embeddings.word", "embeddings.word_embeddings"),
    ("encoder.embeddings.position", "embeddings.position_embeddings"),
    ("encoder.embeddings.token_type", "embeddings.token_type_embeddings"),
    ("encoder.embeddings.norm", "embeddings.LayerNorm"),
]
# Head modules: HF names here are absolute (a leading "@" means "inside the base prefix").
_HEADS = {
    ("bert", "classification"): [("head.dense", "@pooler.dense"), ("head.out", "classifier")],
    ("roberta", "classification"): [("head.dense", "classifier.dense"), ("head.out", "classifier.out_proj")],
    ("distilbert", "classification"): [("head.dense", "pre_classifier"), ("head.out", "classifier")],
    ("bert", "masked-lm"): [("head.dense", "cls.predictions.transform.dense"),
                            ("head.norm", "cls.predictions.transform.LayerNorm"), ("head.bias", "cls.predictions.bias")],
    ("roberta", "masked-lm"): [("head.dense", "lm_head.dense"), ("head.norm", "lm_head.layer_norm"),
                               ("head.bias", "lm_head.bias")],
    ("distilbert", "masked-lm"): [("head.dense", "vocab_transform"), ("head.norm", "vocab_layer_norm"),
                                  ("head.bias", "vocab_projector.bias")],
}
# Aliases HF also writes for the same tensor (loaded if present, never required).
_HEAD_ALIASES = {
    "cls.predictions.decoder.bias": "head.bias",
    "lm_head.decoder.bias": "head.bias",
}
# Tensors a checkpoint may carry that nanoft derives or does not use: skipped, not errors.
_IGNORED = [
    r"(.*\.)?position_ids", r"(.*\.)?token_type_ids", r"(.*\.)?pooler\..*", r"cls\..*", r"lm_head\..*",
    r"classifier\..*", r"pre_classifier\..*", r"vocab_transform\..*", r"vocab_layer_norm\..*",
    r"vocab_projector\..*", r"qa_outputs\..*", r"(.*\.)?masked_bias", r"(.*\.)?attention\.self\.distance_embedding\..*",
]
_IGNORED_RE = re.compile("^(" + "|".join(_IGNORED) + ")$")
NANOFT_PREFIX = "nanoft."  # tensors with no HF counterpart (efficient-attention parameters …)


def _head_key(head: Optional[str]) -> Optional[str]:
    return "classification" if head == "regression" else head


def head_rules(family: str, head: Optional[str]) -> List[Tuple[str, str]]:
    if head == "token-classification":
        return [("head.out", "classifier")]
    return _HEADS.get((family, _head_key(head)), [])


def to_hf(name: str, family: str, head: Optional[str], with_prefix: bool) -> str:
    """The HF checkpoint key for a nanoft state-dict key."""
    module, _, leaf = name.rpartition(".")
    prefix = PREFIX[family] + "." if with_prefix else ""
    for ours, theirs in head_rules(family, head):
        if name == ours or module == ours:
            hf = theirs if name == ours else f"{theirs}.{leaf}"
            return prefix + hf[1:] if hf.startswith("@") else hf
    m = re.match(r"^encoder\.layers\.(\d+)\.(.*)$", module)
    table = _LAYER_DISTILBERT if family == "distilbert" else _LAYER_BERT
    if m:
        i = m.group(1)
        for ours, theirs in table:
            if module == ours.format(i=i):
                return f"{prefix}{theirs.format(i=i)}.{leaf}"
    for ours, theirs in _EMBEDDINGS:
        if module == ours:
            return f"{prefix}{theirs}.{leaf}"
    return NANOFT_PREFIX + name


def normalise_hf(key: str, family: str) -> str:
    """Strip the base prefix and modernise legacy LayerNorm names (gamma/beta)."""
    for p in PREFIX.values():
        if key.startswith(p + "."):
            key = key[len(p) + 1:]
            break
    if key.endswith(".gamma"):
        key = key[:-len(".gamma")] + ".weight"
    elif key.endswith(".beta"):
        key = key[:-len(".beta")] + ".bias"
    return key


def from_hf_map(nanoft_keys: List[str], family: str, head: Optional[str]) -> Dict[str, str]:
    """{normalised HF key: nanoft key} for every tensor of the model, plus known aliases."""
    out: Dict[str, str] = {}
    for name in nanoft_keys:
        out[normalise_hf(to_hf(name, family, head, with_prefix=False), family)] = name
    if _head_key(head) == "masked-lm":
        for alias, ours in _HEAD_ALIASES.items():
            out.setdefault(alias, ours)
    return out


def is_ignorable(normalised_key: str) -> bool:
    return bool(_IGNORED_RE.match(normalised_key))
