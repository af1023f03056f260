"""Names of tensors: nanoft's module tree ↔ Hugging Face checkpoints, per family.

nanoft names what things are (`encoder.layers.3.attention.query`); Hugging Face checkpoints
use each family's historical names (`bert.encoder.layer.3.attention.self.query`,
`distilbert.transformer.layer.3.attention.q_lin`). The family's `Family` record holds its tables;
this module applies them: a nanoft name to the canonical HF name, and back after normalising
legacy spellings (`gamma`/`beta`, with or without the family's `bert.`/`roberta.`/… prefix).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional

from nanoft.weights.family import Family, Pairs

# Tensors any checkpoint may carry that nanoft derives or does not use: skipped, not errors.
# Each family adds its own heads' names (`Family.skipped`).
_SKIPPED = (r"(.*\.)?position_ids", r"(.*\.)?token_type_ids", r"(.*\.)?pooler\..*", r"classifier\..*",
            r"qa_outputs\..*", r"(.*\.)?masked_bias", r"(.*\.)?attention\.self\.distance_embedding\..*")
NANOFT_PREFIX = "nanoft."  # tensors with no HF counterpart (efficient-attention parameters …)
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


def head_rules(family: Family, head: Optional[str]) -> Pairs:
    return family.heads.get("classification" if head == "regression" else head, ())


def _hf_head_name(name: str, ours: str, theirs: str, prefix: str) -> Optional[str]:
    """The HF name of tensor `name` under the head rule (ours → theirs), or None if it does not apply."""
    module, _, leaf = name.rpartition(".")
    if name != ours and module != ours:
        return None
    hf = theirs if name == ours else f"{theirs}.{leaf}"
    return prefix + hf[1:] if hf.startswith("@") else hf


def to_hf(name: str, family: Family, head: Optional[str], with_prefix: bool) -> str:
    """The HF checkpoint key for a nanoft state-dict key."""
    prefix = family.prefixes[0] + "." if with_prefix else ""
    for ours, theirs in head_rules(family, head):
        hf = _hf_head_name(name, ours, theirs, prefix)
        if hf is not None:
            return hf
    module, _, leaf = name.rpartition(".")
    layer = _LAYER.match(module)
    i = layer.group(1) if layer else None
    for ours, theirs in family.layer_keys if layer else family.embedding_keys:
        if module == ours.format(i=i):
            return f"{prefix}{theirs.format(i=i)}.{leaf}"
    return NANOFT_PREFIX + name


def normalise_hf(key: str, family: Family) -> str:
    """Strip the base prefix and modernise legacy LayerNorm names (gamma/beta)."""
    for p in family.prefixes:
        if key.startswith(p + "."):
            key = key[len(p) + 1:]
            break
    if key.endswith(".gamma"):
        key = key[:-len(".gamma")] + ".weight"
    elif key.endswith(".beta"):
        key = key[:-len(".beta")] + ".bias"
    return key


def from_hf_map(nanoft_keys: List[str], family: Family, head: Optional[str]) -> Dict[str, str]:
    """{normalised HF key: nanoft key} for every tensor of the model, plus the other names HF writes."""
    out: Dict[str, str] = {}
    for name in nanoft_keys:
        out[normalise_hf(to_hf(name, family, head, with_prefix=False), family)] = name
        for ours, theirs in head_rules(family, head):  # a canonical name first, then its aliases
            hf = _hf_head_name(name, ours, theirs, prefix="")
            if hf is not None:
                out.setdefault(normalise_hf(hf, family), name)
    return out


def is_skipped(normalised_key: str, family: Family) -> bool:
    """A tensor nanoft leaves unused (a head it does not build, a derived buffer)."""
    return any(re.fullmatch(pattern, normalised_key) for pattern in (*_SKIPPED, *family.skipped))
