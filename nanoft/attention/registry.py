"""Attention kinds by name: `build("performer", num_heads=12, head_dim=64, max_length=512, ...)`.

Each kind is a module class with an `Options` dataclass; the dataclass fields are the kind's
options and their defaults, so `options_of` and the checks in `build` never drift from the code.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Dict, List, Optional

from torch import nn

from nanoft.attention.bigbird import BigBirdAttention
from nanoft.attention.full import FullAttention
from nanoft.attention.linformer import LinformerAttention
from nanoft.attention.longformer import LongformerAttention
from nanoft.attention.performer import PerformerAttention
from nanoft.errors import ConfigError

KINDS: Dict[str, type] = {
    "full": FullAttention,
    "linformer": LinformerAttention,
    "performer": PerformerAttention,
    "longformer": LongformerAttention,
    "bigbird": BigBirdAttention,
}


def _unknown(what: str, name: str, valid: List[str]) -> ConfigError:
    """One-line error: the bad name, the nearest valid one and all valid ones."""
    near = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return ConfigError(f"unknown {what} {name!r}", fix=f"{hint}valid: {', '.join(valid) or '(none)'}")


def available() -> List[str]:
    """Names of all attention kinds."""
    return list(KINDS)


def _kind_class(kind: str) -> type:
    if kind not in KINDS:
        raise _unknown("attention kind", kind, available())
    return KINDS[kind]


def options_of(kind: str) -> Dict[str, Any]:
    """The kind-specific options of `kind` and their defaults (for CLI help)."""
    return {f.name: f.default for f in dataclasses.fields(_kind_class(kind).Options)}


def build(kind: str, *, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
          scale: Optional[float] = None, **options: Any) -> nn.Module:
    """A new attention module of `kind`; unknown kinds and options raise ConfigError."""
    cls = _kind_class(kind)
    valid = list(options_of(kind))
    for name in options:
        if name not in valid:
            raise _unknown(f"{kind} attention option", name, valid)
    return cls(num_heads, head_dim, max_length, dropout, scale, **options)
