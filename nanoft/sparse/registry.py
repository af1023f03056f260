"""Pruning methods by name: `build("gradual", model, SparsityOptions(sparsity=0.8))`.

A method is a `Pruner` subclass and one `register` call. Names of the form N:M (2:4, 1:4 …) build
the N:M method with those numbers.
"""
from __future__ import annotations

import difflib
import re
from typing import Dict, List, Optional

from torch import nn

from nanoft.errors import ConfigError
from nanoft.sparse.base import Pruner, SparsityOptions
from nanoft.sparse.keep import SavedMasks
from nanoft.sparse.magnitude import GradualMagnitude, OneShotMagnitude
from nanoft.sparse.movement import MovementPruning
from nanoft.sparse.nm import NMSparsity
from nanoft.sparse.rigl import RigL

_METHODS: Dict[str, type] = {}
_NM = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def register(name: str, cls: type) -> type:
    """Add pruning method `name`, built by `cls` (a Pruner subclass); returns `cls`."""
    if not (isinstance(cls, type) and issubclass(cls, Pruner)):
        raise TypeError(f"pruning method {name!r} must be a Pruner subclass, got {cls!r}")
    if name in _METHODS:
        raise ValueError(f"pruning method {name!r} is already registered")
    _METHODS[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove method `name` (a test's or a plugin's own)."""
    get(name)
    del _METHODS[name]


def names() -> List[str]:
    """Registered method names; "n:m" stands for any N:M such as 2:4."""
    return list(_METHODS)


def parse_nm(method: str) -> Optional["tuple[int, int]"]:
    """(N, M) when `method` reads N:M, else None; N ≥ M or zero is a ConfigError."""
    found = _NM.fullmatch(method)
    if not found:
        return None
    n, m = int(found.group(1)), int(found.group(2))
    if not 0 < n < m:
        raise ConfigError(f"N:M sparsity needs 0 < N < M, got {method.strip()}", fix="e.g. --prune 2:4")
    return n, m


def get(method: str) -> type:
    """The Pruner class of `method`; an unknown name is a ConfigError listing the valid ones."""
    if parse_nm(method) is not None:
        return _METHODS["n:m"]
    if method not in _METHODS:
        near = difflib.get_close_matches(method, names(), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown pruning method {method!r}", fix=f"{hint}use one of {', '.join(names())} "
                                                                   "(N:M as numbers, e.g. 2:4)")
    return _METHODS[method]


def check(method: str, options: SparsityOptions) -> None:
    """Everything about `method` and `options` that can be checked without a model."""
    cls = get(method)
    options.check()
    nm = parse_nm(method)
    if nm is not None:
        implied = 1 - nm[0] / nm[1]
        if options.sparsity is not None and abs(options.sparsity - implied) > 1e-9:
            raise ConfigError(f"--prune {method.strip()} means sparsity {implied:g}, but --sparsity is "
                              f"{options.sparsity:g}", fix="leave --sparsity out with N:M")
    elif getattr(cls, "from_masks", False):
        chosen = [flag for flag, on in (("--sparsity", options.sparsity is not None),
                                        ("--sparsity-targets", bool(options.sparsity_targets)),
                                        ("--sparsity-embeddings", options.sparsity_embeddings),
                                        ("--sparsity-head", options.sparsity_head)) if on]
        if chosen:
            raise ConfigError(f"--prune {method} takes the sparsity and the pruned tensors from the saved masks, "
                              f"not from {', '.join(chosen)}", fix=f"leave {', '.join(chosen)} out")
    elif options.sparsity is None:
        raise ConfigError(f"--prune {method} needs --sparsity", fix="e.g. --sparsity 0.8")
    if options.prune_masks is not None and not getattr(cls, "from_masks", False):
        raise ConfigError(f"--prune-masks applies to --prune keep, not --prune {method.strip()}",
                          fix="continue from saved masks with --prune keep --prune-masks DIR")


def build(method: str, model: nn.Module, options: SparsityOptions) -> Pruner:
    """A pruner of `method` on `model`'s chosen weights (masks not yet set: call `setup()`)."""
    check(method, options)
    if any(getattr(m, "is_peft_layer", False) for m in model.modules()):
        raise ConfigError("cannot prune a model with PEFT layers in it, merged or not",
                          fix="prune with full fine-tuning, or after peft.merge_and_unload (an adapter merged into "
                              "pruned weights fills the zeros back in)")
    cls = get(method)
    weights = cls.choose_weights(model, options)
    nm = parse_nm(method)
    if nm is not None:
        return NMSparsity(weights, options, *nm)
    return cls(weights, options)


for _cls in (OneShotMagnitude, GradualMagnitude, MovementPruning, RigL, NMSparsity, SavedMasks):
    register(_cls.name, _cls)
