"""Model FLOPs of training an encoder, and the machine's matmul peak they are measured against.

"Fast" means little against another library alone; against the hardware it means something. A run
counts the FLOPs its model needs for the real (non-pad) tokens it trained on, divides by the
training time (achieved FLOP/s), and on CPU divides that by a matmul peak measured once per
process (utilisation). The count is of the model, not of what an implementation executes: pad
tokens, recomputation and attention kernels that do more work count nothing, so two libraries
training the same model on the same examples are credited the same FLOPs (docs/flops.md).

Forward FLOPs, counting a multiply-add as 2 and only matmuls (embedding lookups, LayerNorm,
softmax, activations, dropout and the loss are O(h) per token, under 1% at MiniLM size):

    per token, per layer:   Q, K, V, O projections   2 · 4 · h²
                            attention scores QKᵀ      2 · n · h      (n: that sequence's real length)
                            weighted sum of values    2 · n · h
                            feed-forward (2 linears)  2 · 2 · h · i
    per sequence:           head: dense (pooler)      2 · h²         (on the first token only)
                                  classifier          2 · h · c

Backward costs twice the forward (a gradient for the inputs and one for the weights of every
matmul), so training = 3 × forward. Exact for full fine-tuning with full attention; an upper bound
under PEFT (frozen weights need no weight gradients) and for efficient attention kinds.
"""
from __future__ import annotations

import functools
import time
from typing import Dict, Iterable, Optional

import torch

from nanoft.config import ModelConfig

TRAIN_MULTIPLIER = 3  # forward + backward (2 × forward)


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of the encoder for one token of a sequence of `seq_len` real tokens (no head)."""
    h, i, n = config.hidden_size, config.intermediate_size, seq_len
    per_layer = 2 * 4 * h * h + 2 * 2 * n * h + 2 * 2 * h * i
    return config.num_layers * per_layer


def head_flops(config: ModelConfig, num_labels: int) -> int:
    """Forward FLOPs of the classification head for one sequence (dense + classifier on the first token)."""
    h = config.hidden_size
    return 2 * h * h + 2 * h * num_labels


def training_flops_per_token(config: ModelConfig, seq_len: int, num_labels: int = 2) -> float:
    """Training FLOPs (forward + backward) per real token of a sequence of `seq_len` tokens, the head's
    per-sequence cost spread over its tokens: 3 · (L·(8h² + 4nh + 4hi) + (2h² + 2hc) / n)."""
    return TRAIN_MULTIPLIER * (forward_flops_per_token(config, seq_len) + head_flops(config, num_labels) / seq_len)


def training_flops(config: ModelConfig, tokens: int, token_pairs: int, sequences: int, num_labels: int = 2) -> int:
    """Training FLOPs of a set of sequences from three sums over them: Σn (`tokens`), Σn² (`token_pairs`,
    the attention term) and their number. Equals Σ over sequences of n · training_flops_per_token(n)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_layers
    forward = (tokens * layers * (8 * h * h + 4 * h * i) + token_pairs * layers * 4 * h
               + sequences * head_flops(config, num_labels))
    return TRAIN_MULTIPLIER * forward


def training_flops_of_lengths(config: ModelConfig, lengths: Iterable[int], num_labels: int = 2) -> int:
    """Training FLOPs of sequences with these real lengths."""
    lengths = [int(n) for n in lengths]
    return training_flops(config, sum(lengths), sum(n * n for n in lengths), len(lengths), num_labels)


# ------------------------------------------------------------------------------ the machine's peak
CALIBRATION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def matmul_peak_flops(precision: str = "fp32", size: int = 1024, repeat: int = 5, threads: Optional[int] = None) -> float:
    """FLOP/s of the best of `repeat` square `size` matmuls on CPU in `precision`: the peak a run's
    utilisation is stated against. Measured once per process (cached per arguments; `threads` is part of the
    key so a change of torch's thread count measures again); takes well under a second at 1024."""
    del threads  # only a cache key: the matmul runs on torch's current thread count
    dtype = CALIBRATION_DTYPES[precision]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / max(best, 1e-9)


def utilisation(config: ModelConfig, tokens: int, token_pairs: int, sequences: int, seconds: float,
                device: torch.device, precision: str, num_labels: int = 2) -> Dict[str, Optional[float]]:
    """What a run reports: its training FLOPs, achieved FLOP/s, and on CPU the matmul peak of its precision
    and the fraction of it achieved (None on other devices, where no calibration runs)."""
    flops = training_flops(config, tokens, token_pairs, sequences, num_labels)
    achieved = flops / max(seconds, 1e-9)
    out: Dict[str, Optional[float]] = {"train_flops": float(flops), "train_flops_per_s": achieved,
                                       "peak_flops_per_s": None, "flop_utilisation": None}
    if device.type == "cpu" and precision in CALIBRATION_DTYPES:
        peak = matmul_peak_flops(precision, threads=torch.get_num_threads())
        out["peak_flops_per_s"] = peak
        out["flop_utilisation"] = achieved / peak
    return out


__all__ = ["forward_flops_per_token", "head_flops", "training_flops_per_token", "training_flops",
           "training_flops_of_lengths", "matmul_peak_flops", "utilisation"]
