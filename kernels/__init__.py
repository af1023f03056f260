"""nanoft.kernels: one attention entry point over fused Triton kernels, torch SDPA and a reference.

    out = nanoft.kernels.attention(q, k, v, key_padding_mask=None, window=None, dropout_p=0.0)
    out = nanoft.kernels.varlen_attention(q, k, v, cu_seqlens, max_seqlen)   # packed, no padding at all

q, k, v are (batch, heads, seq, head_dim); `key_padding_mask` (batch, seq_k) is True where a key is
padding. impl="auto" runs the Triton flash-attention kernels where `triton_eligible` holds (CUDA,
fp16/bf16, head_dim 32/64/128) and torch's scaled_dot_product_attention everywhere else. Nothing on
either path reads a tensor back to the host: each row's end is found on the device, and the kernels
mask key by key the rows that are not right-padded. Triton is imported only when its path is taken,
so CPU installs without it work.

Environment: TRITON_INTERPRET=1 (set before the first Triton call) runs the kernels on CPU through the
Triton interpreter, in fp32/fp64, for tests; NANOFT_TRITON_AUTOTUNE=0 uses one block config per kernel
instead of autotuning (fast compiles).
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

from nanoft.kernels.checks import (PACKED_LAYOUT, TRITON_DTYPES, TRITON_HEAD_DIMS, check_call, check_cu_seqlens,
                                   check_inputs, check_tensors, check_triton, key_ends)
from nanoft.kernels.reference import allowed_mask, default_scale, reference_attention

__all__ = ["attention", "varlen_attention", "dropout_keep_mask", "reference_attention", "allowed_mask",
           "triton_available", "triton_eligible", "check_inputs", "default_scale"]


def triton_available() -> bool:
    """True when the triton package can be imported (it is a dev extra)."""
    return importlib.util.find_spec("triton") is not None


def triton_eligible(q: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None, *,
                    v: Optional[torch.Tensor] = None) -> bool:
    """Whether the fused Triton kernels compute this attention exactly: what impl="auto" takes them for.

    CUDA, fp16/bf16, head_dim 32/64/128 (v's too, when given) and triton installed. Any key_padding_mask
    is exact (rows that are not right-padded are masked key by key), so the mask is not looked at: the
    answer reads shapes, dtypes and devices only, never data (no host-device sync).
    """
    value_dim = q.shape[-1] if v is None else v.shape[-1]
    return (q.is_cuda and q.dtype in TRITON_DTYPES and q.shape[-1] in TRITON_HEAD_DIMS and value_dim == q.shape[-1]
            and triton_available())


def _flash():
    """The Triton kernels module, imported on first use."""
    from nanoft.kernels import flash
    return flash


def _draw_seed(dropout_p: float, dropout_seed: Optional[int]) -> int:
    """Dropout seed for the kernels: the caller's, else one drawn from torch's CPU generator
    (so torch.manual_seed makes runs repeatable, and no GPU sync is needed)."""
    if dropout_p == 0.0:
        return 0
    if dropout_seed is not None:
        return int(dropout_seed)
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
          window: Optional[int], num_global: int, dropout_p: float, causal: bool, scale: float) -> torch.Tensor:
    """torch SDPA with our masks turned into its boolean attn_mask (True = keep)."""
    if window is None and not causal and key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]  # (batch, 1, 1, seq_k), broadcast over heads and queries
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if window is None and key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
    mask = allowed_mask(q.shape[-2], k.shape[-2], key_padding_mask=key_padding_mask, window=window,
                        num_global=num_global, causal=causal, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
              window: Optional[int] = None, dropout_p: float = 0.0, causal: bool = False,
              scale: Optional[float] = None, impl: str = "auto", *, num_global: int = 0,
              dropout_seed: Optional[int] = None, validate: bool = True) -> torch.Tensor:
    """Scaled dot-product attention, (batch, heads, seq_q, d) x (batch, heads, seq_k, d) -> (batch, heads, seq_q, d).

    key_padding_mask: (batch, seq_k) bool, True = padding. window: w keeps keys with |i - j| <= w.
    num_global: with a window, the first num_global positions attend to all and are attended by all.
    causal: key j <= query i. scale: defaults to 1/sqrt(head_dim). impl: auto | triton | sdpa | reference.
    dropout_seed: seed of the Triton kernels' counter-based dropout (default: drawn from torch's RNG).
    validate=False: the caller has checked these inputs already (with `check_inputs`, and for impl="triton"
    with `triton_eligible`), as the `nanoft.attention` modules do, so a call is checked once.
    Query rows with no allowed key give zeros (triton) or NaN (reference).
    """
    if validate:
        check_call(window=window, num_global=num_global, dropout_p=dropout_p, scale=scale, impl=impl)
        check_inputs(q, k, v, key_padding_mask)
    scale = default_scale(q.shape[-1], scale)
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.to(q.device)

    if impl == "auto":
        impl = "triton" if triton_eligible(q, key_padding_mask, v=v) else "sdpa"
    elif impl == "triton" and validate:
        check_triton(q, v, key_padding_mask, _flash().INTERPRET)
    if impl == "reference":
        return reference_attention(q, k, v, key_padding_mask, window, dropout_p, causal, scale,
                                   num_global=num_global)
    if impl == "triton":
        seqlens = dense = None
        if key_padding_mask is not None:
            seqlens, dense = key_ends(key_padding_mask)  # on the device
        return _flash().flash_attention(q, k, v, seqlens=seqlens, window=window, num_global=num_global,
                                        dropout_p=dropout_p, causal=causal, scale=scale,
                                        seed=_draw_seed(dropout_p, dropout_seed),
                                        key_padding_mask=key_padding_mask, dense=dense)
    return _sdpa(q, k, v, key_padding_mask, window, num_global, dropout_p, causal, scale)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, dropout_p: float = 0.0, causal: bool = False, scale: Optional[float] = None,
                     window: Optional[int] = None, impl: str = "auto", *, num_global: int = 0,
                     dropout_seed: Optional[int] = None, validate: bool = True) -> torch.Tensor:
    """Attention over packed sequences: q, k, v (total_tokens, heads, d); sequence b owns tokens
    cu_seqlens[b]:cu_seqlens[b+1] and attends only within itself. No padding is stored or computed.

    max_seqlen may be any bound on the longest sequence (the padded width of the batch the tokens came
    from is one known without reading cu_seqlens). impl="triton" (auto on CUDA) runs one kernel over all
    sequences; "sdpa" runs torch SDPA on a padded copy laid out on the device (see `_varlen_sdpa`);
    "reference" loops over the sequences. validate=False: the caller built cu_seqlens itself (the
    unpadded encoder does), so nothing is read back from the device to check it.
    """
    if validate:
        check_call(window=window, num_global=num_global, dropout_p=dropout_p, scale=scale, impl=impl)
        check_tensors(q, k, v, ndim=3, layout=PACKED_LAYOUT)
        check_cu_seqlens(q, k, v, cu_seqlens, max_seqlen)
    scale = default_scale(q.shape[-1], scale)
    if impl == "auto":
        impl = "triton" if triton_eligible(q, v=v) else "sdpa"
    elif impl == "triton" and validate:
        check_triton(q, v, None, _flash().INTERPRET)
    if impl == "triton":
        return _flash().flash_varlen_attention(q, k, v, cu_seqlens.to(device=q.device, dtype=torch.int32),
                                               max_seqlen, window=window, num_global=num_global,
                                               dropout_p=dropout_p, causal=causal, scale=scale,
                                               seed=_draw_seed(dropout_p, dropout_seed))
    if impl == "sdpa":
        return _varlen_sdpa(q, k, v, cu_seqlens, int(max_seqlen), window, num_global, dropout_p, causal, scale)
    outs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        # one sequence at a time: (len, heads, d) -> (1, heads, len, d)
        qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        out = attention(qs, ks, vs, window=window, dropout_p=dropout_p, causal=causal, scale=scale, impl=impl,
                        num_global=num_global, validate=False)
        outs.append(out[0].transpose(0, 1))  # (len, heads, d)
    return torch.cat(outs, dim=0)


def _padded_rows(cu_seqlens: torch.Tensor, total_tokens: int, width: int) -> torch.Tensor:
    """(total_tokens,) the row of each packed token in a (batch * width) right-padded layout, computed on
    the device: token t of sequence b = searchsorted(ends, t) sits at b * width + (t - cu_seqlens[b])."""
    cu = cu_seqlens.to(torch.long)
    token = torch.arange(total_tokens, device=cu.device)
    seq = torch.searchsorted(cu[1:], token, right=True)  # (total_tokens,) sequence of each token
    return seq * width + (token - cu[seq])


def _varlen_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, width: int,
                 window: Optional[int], num_global: int, dropout_p: float, causal: bool,
                 scale: float) -> torch.Tensor:
    """Packed attention through torch SDPA: scatter q, k, v into a padded (batch, heads, width, d) copy,
    attend with the padding masked, gather the real rows back. Every index is computed on the device.

    Chosen by measurement on CPU (bench/results/unpad_cpu.md: MiniLM's 12 heads x 32, real batches of 32,
    fp32 forward + backward, 1 thread, median ms of interleaved repeats), against the other ways to attend
    over packed sequences:

        batches of          padded copy  per-sequence loop  nested (jagged)  block-diagonal  (padded path)
        SST-2, random           23.8            20.0              61.6            22.7           19.6
        SST-2, bucketed         10.1            24.0              42.6            49.2            7.3
        AG News, random         85.9            66.4             208.8           274.4           78.6
        AG News, bucketed       28.9            59.2              94.1           319.9           22.3

    It is the fastest on bucketed batches (the default sampler's, 2-2.4x ahead of the loop) and 16-23%
    behind the loop on random ones, where attention is a few percent of a step; it needs no host read of
    the lengths (the loop does), and costs a few ms over the padded path's SDPA. Only attention pads; every
    other op of the unpadded encoder stays on (total_tokens, hidden).
    """
    batch = cu_seqlens.numel() - 1
    total, heads = q.shape[0], q.shape[1]
    rows = _padded_rows(cu_seqlens.to(q.device), total, width)  # (total,)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(q.device)
    key_padding_mask = torch.arange(width, device=q.device)[None, :] >= lengths[:, None]  # (batch, width)

    def padded(t: torch.Tensor) -> torch.Tensor:  # (total, heads, d) -> (batch, heads, width, d)
        out = t.new_zeros(batch * width, heads, t.shape[-1]).index_copy(0, rows, t)
        return out.view(batch, width, heads, t.shape[-1]).transpose(1, 2)

    out = _sdpa(padded(q), padded(k), padded(v), key_padding_mask, window, num_global, dropout_p, causal, scale)
    return out.transpose(1, 2).reshape(batch * width, heads, -1).index_select(0, rows)  # (total, heads, d)


def dropout_keep_mask(seed: int, batch: int, heads: int, seq_q: int, seq_k: int, dropout_p: float,
                      device: torch.device | str = "cuda") -> torch.Tensor:
    """The keep-mask (True = kept) that the Triton kernels draw for `seed`, as a (batch, heads, seq_q, seq_k)
    bool tensor: the same counter-based RNG and offsets, so a reference can reproduce a dropout run."""
    return _flash().dropout_keep_mask(seed, batch, heads, seq_q, seq_k, dropout_p, torch.device(device))
