"""The efficient kinds never allocate an n x n tensor, forward or backward.

A TorchDispatchMode sees every op torch runs (backward ops included) and records the largest
storage any op output lives in, in elements; for n = 4096 the efficient kinds must stay far
below n * n, while the same tracker on dense attention must see n * n (so the test can fail).
(`full` itself runs torch SDPA, whose fused CPU kernel does not store n x n either.)
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nanoft.attention import build

N = 4096


class LargestAllocation(TorchDispatchMode):
    """Records the largest output storage, in elements, of any op run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                elements = t.untyped_storage().nbytes() // t.element_size()
                if elements > self.largest:
                    self.largest, self.op = elements, str(func)
        return out


def largest_allocation(attention, seq: int) -> LargestAllocation:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, seq, 16, generator=g).requires_grad_() for _ in range(3))
    mask = torch.zeros(1, seq, dtype=torch.bool)
    mask[:, seq - 100:] = True
    with LargestAllocation() as tracker:
        attention(q, k, v, mask).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    return tracker


def dense_attention(q, k, v, key_padding_mask):
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5  # (batch, heads, seq, seq)
    return torch.softmax(scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf")), dim=-1) @ v


def test_tracker_sees_the_n_by_n_matrix_of_dense_attention():
    seq = 1024
    assert largest_allocation(dense_attention, seq).largest >= seq * seq


@pytest.mark.parametrize("kind, options", [
    ("longformer", {"window": 128}),
    ("bigbird", {"block_size": 64, "seed": 0}),
    ("linformer", {"k": 256}),
    ("performer", {"num_features": 256, "seed": 0}),
])
def test_no_n_by_n_allocation_at_4096(kind, options):
    module = build(kind, num_heads=1, head_dim=16, max_length=N, **options)
    tracker = largest_allocation(module, N)
    assert tracker.largest < N * N / 8, (tracker.largest, tracker.op)
