"""Attention kinds by name: `build("performer", num_heads=12, head_dim=64, max_length=512, ...)`.

Each kind is an `AttentionCore` subclass with an `Options` dataclass; the dataclass fields are the
kind's options, their defaults and help, so `options_of`, `option_help` and the checks in `build`
never drift from the code. A kind from outside the package is one class and one call,
`register("toy", ToyAttention)`, after which `attention="toy"` works in configs and `nanoft train`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from nanoft.attention.base import AttentionCore, option_default, unknown_name
from nanoft.attention.bigbird import BigBirdAttention
from nanoft.attention.full import FullAttention
from nanoft.attention.linformer import LinformerAttention
from nanoft.attention.longformer import LongformerAttention
from nanoft.attention.performer import PerformerAttention

_KINDS: Dict[str, type] = {}


def register(name: str, cls: type) -> type:
    """Add attention kind `name`, built by `cls` (an `AttentionCore` subclass); returns `cls`."""
    if not (isinstance(cls, type) and issubclass(cls, AttentionCore)):
        raise TypeError(f"attention kind {name!r} must be an AttentionCore subclass, got {cls!r}")
    if name in _KINDS:
        raise ValueError(f"attention kind {name!r} is already registered (to {_KINDS[name].__name__})")
    if cls.__dict__.get("kind") not in (None, "", name):
        raise ValueError(f"{cls.__name__} is already registered as {cls.kind!r}")
    cls.kind = name
    _KINDS[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove kind `name` (a test's or a plugin's own kind)."""
    _kind_class(name).kind = ""
    del _KINDS[name]


def names() -> List[str]:
    """Names of all attention kinds, in registration order."""
    return list(_KINDS)


available = names  # the older name of `names`


def choices() -> Dict[str, str]:
    """{kind: the first line of its docstring}: what `nanoft train --help` lists."""
    return {name: (cls.__doc__ or "").strip().partition("\n")[0] for name, cls in _KINDS.items()}


def _kind_class(kind: str) -> type:
    if kind not in _KINDS:
        raise unknown_name("attention kind", kind, names())
    return _KINDS[kind]


def options_of(kind: str) -> Dict[str, Any]:
    """The kind-specific options of `kind` and their defaults."""
    return {f.name: option_default(f) for f in dataclasses.fields(_kind_class(kind).Options)}


def option_help(kind: str) -> Dict[str, str]:
    """The kind-specific options of `kind` and their help strings (for CLI help)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(_kind_class(kind).Options)}


def build(kind: str, *, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
          scale: Optional[float] = None, **options: Any) -> AttentionCore:
    """A new attention module of `kind`; unknown kinds and options raise ConfigError."""
    return _kind_class(kind)(num_heads, head_dim, max_length, dropout, scale, **options)


for _name, _cls in (("full", FullAttention), ("linformer", LinformerAttention), ("performer", PerformerAttention),
                    ("longformer", LongformerAttention), ("bigbird", BigBirdAttention)):
    register(_name, _cls)
