"""Input checks for the attention entry points: a wrong shape, dtype or device is a one-line
`ConfigError` naming the argument and the fix, never a crash deep inside a Triton kernel."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from nanoft.errors import ConfigError

IMPLS = ("auto", "triton", "sdpa", "reference")
TRITON_HEAD_DIMS = (32, 64, 128)
TRITON_DTYPES = (torch.float16, torch.bfloat16)


PADDED_LAYOUT = "(batch, heads, seq, head_dim)"
PACKED_LAYOUT = "(total_tokens, heads, head_dim)"


def check_call(*, window: Optional[int], num_global: int, dropout_p: float, scale: Optional[float],
               impl: str) -> None:
    """The non-tensor arguments of both entry points."""
    if impl not in IMPLS:
        raise ConfigError(f"unknown attention impl {impl!r}", fix=f"use one of {', '.join(IMPLS)}")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 0):
        raise ConfigError(f"window must be a non-negative int (keys on each side), got {window!r}",
                          fix="pass window=None for full attention")
    if not isinstance(num_global, int) or num_global < 0:
        raise ConfigError(f"num_global must be a non-negative int, got {num_global!r}", fix="pass 0 for none")
    if num_global > 0 and window is None:
        raise ConfigError("num_global needs a sliding window (without one every token already attends to all)",
                          fix="pass window=w or num_global=0")
    if not 0.0 <= dropout_p < 1.0:
        raise ConfigError(f"dropout_p must be in [0, 1), got {dropout_p}", fix="pass a probability below 1")
    if scale is not None and not scale > 0:
        raise ConfigError(f"scale must be positive, got {scale}", fix="pass None for 1/sqrt(head_dim)")


def check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, ndim: int, layout: str) -> None:
    """q, k, v are floating tensors of one dtype, on one device, with `ndim` dims and one head_dim for q and k."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"attention argument {name} is a {type(t).__name__}, not a tensor",
                              fix=f"pass a torch.Tensor shaped {layout}")
        if t.dim() != ndim:
            raise ConfigError(f"attention argument {name} has shape {tuple(t.shape)}, expected {ndim} dims {layout}",
                              fix="reshape to the documented layout")
        if not t.is_floating_point():
            raise ConfigError(f"attention argument {name} has dtype {t.dtype}, expected a floating dtype",
                              fix="cast q, k, v to float16, bfloat16 or float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ConfigError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})", fix="cast them to one dtype")
    if not (q.device == k.device == v.device):
        raise ConfigError(f"q, k, v are on different devices ({q.device}, {k.device}, {v.device})",
                          fix="move them to one device")
    if q.shape[-1] != k.shape[-1]:
        raise ConfigError(f"q head_dim {q.shape[-1]} != k head_dim {k.shape[-1]}", fix="project q and k to one size")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_padding_mask: Optional[torch.Tensor] = None) -> None:
    """All tensor checks of the padded layout, (batch, heads, seq, head_dim) plus a (batch, seq_k) bool mask.

    `nanoft.attention` modules run this once per call and then call `attention(..., validate=False)`.
    """
    check_tensors(q, k, v, ndim=4, layout=PADDED_LAYOUT)
    check_padded(q, k, v, key_padding_mask)


def check_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_padding_mask: Optional[torch.Tensor]) -> None:
    """Shapes of the padded layout: q (batch, heads, seq_q, d), k/v (batch, heads, seq_k, d)."""
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ConfigError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree on "
                          "(batch, heads) and k/v on seq_k", fix="pass (batch, heads, seq, head_dim) tensors")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise ConfigError("key_padding_mask must be a bool tensor (True = padding)",
                              fix="pass attention_mask == 0 from the tokenizer")
        if tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
            raise ConfigError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected "
                              f"(batch, seq_k) = {(k.shape[0], k.shape[2])}", fix="pass one row per sequence")


def check_triton(q: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
                 interpret: bool) -> None:
    """What the Triton kernels support: CUDA (or the interpreter, which also takes fp32/fp64), fp16/bf16,
    head_dim 32/64/128, and a right-padded key_padding_mask."""
    if not (q.is_cuda or interpret):
        raise ConfigError(f"impl='triton' needs CUDA tensors, got device {q.device}",
                          fix="move q, k, v to CUDA, set TRITON_INTERPRET=1 for the CPU interpreter, "
                              "or use impl='sdpa'")
    allowed = TRITON_DTYPES + ((torch.float32, torch.float64) if interpret else ())  # fp64: gradcheck
    if q.dtype not in allowed:
        raise ConfigError(f"impl='triton' supports {', '.join(str(d) for d in allowed)}, got {q.dtype}",
                          fix="cast to torch.bfloat16 or torch.float16, or use impl='sdpa'")
    if q.shape[-1] not in TRITON_HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        raise ConfigError(f"impl='triton' supports head_dim {TRITON_HEAD_DIMS} (same for q, k, v), "
                          f"got {q.shape[-1]} / {v.shape[-1]}", fix="use impl='sdpa' for other sizes")
    if key_padding_mask is not None and not is_right_padded(key_padding_mask):
        raise ConfigError("the Triton kernels need right-padded key_padding_mask rows (real tokens "
                          "first, then padding)", fix="pad on the right, or use impl='sdpa'")


def is_right_padded(key_padding_mask: torch.Tensor) -> bool:
    """Whether every row is real tokens, then padding (no row goes from padding back to a real token).

    Only `impl="triton"` with validation asks for it (the layout the kernels skip padding in without a
    mask); impl="auto" never does. Reading the answer waits for the mask's device (a sync on CUDA).
    """
    return not bool((key_padding_mask[:, :-1] & ~key_padding_mask[:, 1:]).any())


def key_ends(key_padding_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """((batch,) int32 one past each row's last real key, (batch,) int32 1 where the row is right-padded),
    computed on the mask's device and never read by the host: the kernels skip every key block past a row's
    end and mask key by key only in rows with padding before it (left padding, holes)."""
    real = ~key_padding_mask  # (batch, seq_k)
    position = torch.arange(1, real.shape[1] + 1, device=real.device, dtype=torch.int32)
    ends = torch.where(real, position, 0).amax(dim=1).to(torch.int32)  # 0 for a row of padding only
    dense = (real.sum(dim=1, dtype=torch.int32) == ends).to(torch.int32)
    return ends, dense


def check_cu_seqlens(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int) -> None:
    """Packed layout: q, k, v (total_tokens, heads, d); cu_seqlens (batch + 1,) int32 offsets from 0."""
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ConfigError(f"packed q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree on "
                          "(total_tokens, heads)", fix="pack q, k, v from the same sequences")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ConfigError("cu_seqlens must be a 1-D int32 tensor of batch + 1 offsets starting at 0",
                          fix="use torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()")
    cu = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    if cu[0] != 0 or cu[-1] != q.shape[0] or min(lengths) < 0:
        raise ConfigError(f"cu_seqlens must rise from 0 to total_tokens={q.shape[0]}, got {cu[:4]}...{cu[-1]}",
                          fix="build it from the lengths of the packed sequences")
    if max(lengths) > max_seqlen:
        raise ConfigError(f"max_seqlen={max_seqlen} is below the longest sequence ({max(lengths)})",
                          fix="pass max_seqlen = max of the lengths")
