"""Trainer state without pickle: tensors in safetensors, everything else in JSON.

Optimizer, scheduler, sampler, RNG and technique states are nested dicts/lists/tuples of numbers,
strings, tensors and NumPy arrays. `encode` turns such a tree into plain JSON in which every tensor
is replaced by a reference `{"__tensor__": key}` into a flat tensor table; `decode` reverses it and
accepts nothing else, so reading a run directory can never run code (unlike `torch.load`, which
unpickles). Tuples, dicts with non-string keys, non-finite floats and arrays are tagged so they come
back as what they were: a resumed run must see exactly the state it saved.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np
import torch

from nanoft.errors import CheckpointError

_TAGS = ("__tensor__", "__array__", "__tuple__", "__items__", "__float__")


def encode(obj: Any, tensors: Dict[str, torch.Tensor], key: str = "state") -> Any:
    """JSON-able form of `obj`; its tensors and arrays are added to `tensors` under path-like keys."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):  # e.g. NumPy's MT19937 key (uint32, which safetensors lacks)
        tensors[key] = torch.from_numpy(obj.astype(np.int64))
        return {"__array__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return encode(obj.item(), tensors, key)
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[encode(k, tensors, f"{key}.k{i}"), encode(v, tensors, f"{key}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} in trainer state ({key})")


def decode(obj: Any, tensors: Dict[str, torch.Tensor], where: str) -> Any:
    """The tree `encode` wrote; anything else in the file is an error naming `where`."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        raise CheckpointError(f"unexpected {type(obj).__name__} in trainer state", path=where)
    tags = [t for t in _TAGS if t in obj]
    if not tags:
        return {k: decode(v, tensors, where) for k, v in obj.items()}
    tag = tags[0]
    value = obj[tag]
    if tag in ("__tensor__", "__array__"):
        if not isinstance(value, str) or value not in tensors:
            raise CheckpointError(f"trainer state refers to a missing tensor {value!r}", path=where,
                                  fix="the checkpoint is incomplete or corrupt; resume from another one or start anew")
        if tag == "__tensor__":
            return tensors[value]
        dtype = obj.get("dtype")
        if dtype not in ("uint32", "int64", "int32", "float64", "uint8"):
            raise CheckpointError(f"unsupported array dtype {dtype!r} in trainer state", path=where)
        return tensors[value].numpy().astype(dtype)
    if tag == "__float__":
        if value not in ("inf", "-inf", "nan"):
            raise CheckpointError(f"bad float {value!r} in trainer state", path=where)
        return float(value)
    if not isinstance(value, list):
        raise CheckpointError(f"malformed {tag} entry in trainer state", path=where)
    if tag == "__tuple__":
        return tuple(decode(v, tensors, where) for v in value)
    items: List[Any] = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise CheckpointError("malformed dict entry in trainer state", path=where)
        items.append((decode(pair[0], tensors, where), decode(pair[1], tensors, where)))
    try:
        return dict(items)
    except TypeError:
        raise CheckpointError("unhashable dict key in trainer state", path=where) from None


def expect(state: Any, key: str, kind: type, where: str) -> Any:
    """`state[key]` if it is a `kind`; else one clear error (a hand-edited or foreign state file)."""
    if not isinstance(state, dict) or key not in state:
        raise CheckpointError(f"trainer state has no {key!r}", path=where,
                              fix="the checkpoint is incomplete or from another program; start a new run")
    value = state[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"trainer state {key!r} is a {type(value).__name__}, expected {kind.__name__}",
                              path=where, fix="the checkpoint is corrupt; resume from another one or start anew")
    return value
