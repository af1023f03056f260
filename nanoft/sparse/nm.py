"""N:M semi-structured sparsity: in every group of M consecutive weights along the input dimension,
keep the N of largest magnitude (2:4 is what NVIDIA's sparse tensor cores and
`torch.sparse.to_sparse_semi_structured` accelerate). The masks are set once, before training."""
from __future__ import annotations

import torch

from nanoft.errors import ConfigError
from nanoft.sparse.base import Pruner


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| of each group of m along the last (input) dimension; ties go to the lower index."""
    rows, cols = weight.shape
    groups = weight.detach().abs().float().reshape(rows, cols // m, m)      # (out, in/m, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order[..., :n], True)
    return mask.reshape(rows, cols)


class NMSparsity(Pruner):
    """N of every M weights along the input dimension kept (e.g. 2:4)."""

    name = "n:m"

    def __init__(self, weights, options, n: int = 2, m: int = 4) -> None:
        super().__init__(weights, options)
        self.n, self.m = n, m
        bad = [f"{name} {tuple(w.shape)}" for name, w in weights.items() if w.ndim != 2 or w.shape[1] % m]
        if bad:
            raise ConfigError(f"{n}:{m} sparsity needs an input size divisible by {m}; not: {', '.join(bad)}",
                              fix="choose other --sparsity-targets")

    @property
    def target(self) -> float:
        return 1.0 - self.n / self.m

    def setup(self) -> None:
        self.set_masks({name: nm_mask(w, self.n, self.m) for name, w in self.weights.items()})

    def state_dict(self):
        return {**super().state_dict(), "n": self.n, "m": self.m}
