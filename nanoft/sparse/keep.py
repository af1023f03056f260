"""Continued sparse training: `--prune keep` trains on with the masks a pruned run saved.

A pruned run writes `masks.safetensors` (True = kept) into RUN/ and beside every model it exports
(RUN/best/, …). `--prune keep --prune-masks DIR` (default: the --model directory) loads them, applies
them before the first step and never changes them: the zeros of the pruned model stay exactly the
zeros, nothing regrows, and the sparsity is that of the file (so --sparsity and the --sparsity-targets
family do not apply: the file names the pruned tensors).

The masks file comes from elsewhere, so it is read as data only (safetensors, no pickle) and checked
before use: every name a parameter of the model, every shape that parameter's, every value 0 or 1.
Each problem is one line naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from nanoft.errors import CheckpointError, ConfigError
from nanoft.sparse.base import Pruner, SparsityOptions

MASKS_FILE = "masks.safetensors"


def masks_path(path: "str | Path") -> Path:
    """The masks file `path` names: the file itself, or `path`/masks.safetensors for a directory."""
    p = Path(path)
    if p.is_dir():
        p = p / MASKS_FILE
        if not p.is_file():
            raise ConfigError(f"no {MASKS_FILE} in this directory", path=str(p.parent),
                              fix="pass the run or model directory a pruned run wrote, or the masks file itself")
    elif not p.is_file():
        raise ConfigError("masks file or directory not found", path=str(p))
    return p


def load_masks(path: "str | Path", params: Dict[str, torch.Tensor], skip: tuple = ()) -> Dict[str, torch.Tensor]:
    """{name: bool mask} from a masks file, checked against `params` ({name: parameter}): names, shapes, 0/1
    values. Names starting with a prefix in `skip` are left out unchecked (e.g. "head." for a headless model)."""
    from nanoft.weights.safetensors_io import SafetensorsFile

    file = masks_path(path)
    where = str(file)
    f = SafetensorsFile(file)  # a corrupt or truncated file: one CheckpointError line
    names = [n for n in f.keys() if not n.startswith(skip)] if skip else list(f.keys())
    if not names:
        raise CheckpointError("the masks file holds no masks", path=where)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise CheckpointError(f"masks for tensors this model does not have: {_some(unknown)}", path=where,
                              fix="use the masks saved with this model (same family, sizes and head)")
    masks = {}
    for name in names:
        if f.shape(name) != tuple(params[name].shape):
            raise CheckpointError(f"mask {name!r} has shape {list(f.shape(name))}, the model's tensor "
                                  f"{list(params[name].shape)}", path=where)
        t = f.tensor(name)
        if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):  # NaN is neither
            raise CheckpointError(f"mask {name!r} holds values other than 0 and 1", path=where,
                                      fix="a mask is 1 where the weight is kept, 0 where it is pruned")
        masks[name] = t.to(torch.bool).clone()
    return masks


def _some(names: List[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" … ({len(names)} in all)" if len(names) > limit else "")


class SavedMasks(Pruner):
    """Masks loaded from a file, applied from step 0 and never changed."""

    name = "keep"
    from_masks = True  # the masks file, not --sparsity and the target options, says what is pruned

    @classmethod
    def choose_weights(cls, model: nn.Module, options: SparsityOptions) -> Dict[str, nn.Parameter]:
        if options.prune_masks is None:
            raise ConfigError("--prune keep needs the saved masks",
                              fix="pass --prune-masks DIR (a pruned run or model directory, or its masks.safetensors)")
        params = dict(model.named_parameters())
        return {n: params[n] for n in load_masks(options.prune_masks, params)}

    @property
    def target(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / total if total else 0.0

    def setup(self) -> None:
        self.set_masks(load_masks(self.options.prune_masks, self.weights))

    def update_masks(self, step: int, total_steps: int, grads: bool) -> Optional[Dict[str, torch.Tensor]]:
        return None
