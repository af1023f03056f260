"""Flash attention in Triton: forward and backward, with key padding, packed varlen, sliding windows,
causal masking and dropout.

Forward (one program per query block of one sequence and head): stream key/value blocks through SRAM,
keep a running max m and running sum l of exp(scores - m) (the online softmax), rescale the output
accumulator whenever m grows, and save logsumexp = m + log(l) per query row. Nothing of size
(seq_q, seq_k) ever reaches memory.

Backward recomputes the probabilities from q, k and the saved logsumexp instead of storing them:
  P = exp(S - lse),  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  delta = rowsum(dO * O),
  dQ = scale * dS K,  dK = scale * dS^T Q.
One kernel owns a key block and loops over query blocks (dK, dV); another owns a query block and
loops over key blocks (dQ); neither needs atomics.

Blocks that no query of a program may see are never loaded: key blocks past a row's last real key
(each row's end is found from the mask on the device, never read by the host), blocks beyond the
causal diagonal, and blocks outside the sliding window (except those holding global tokens). Blocks
that are fully visible skip the element-wise mask; a row with padding before its end (left padding,
holes) has every block masked with its key_padding_mask, so any mask is exact. Dropout draws a
counter-based random number (Philox via tl.rand) for each (row, key) pair from a seed, so the backward
regenerates the very same mask without storing it.

Scores are handled in base 2 inside the kernels (exp2 is the fast instruction): qk_scale = scale * log2(e).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl


def _interpreting() -> bool:
    """Whether @triton.jit builds interpreter functions (read from triton.knobs, or the variable on old tritons)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The interpreter is chosen when @triton.jit runs, i.e. when this module is imported.
INTERPRET: bool = _interpreting()

LOG2E = 1.4426950408889634


# NANOFT_TRITON_AUTOTUNE=0 keeps one config per kernel: seconds of compiling instead of minutes (tests).
AUTOTUNE: bool = os.environ.get("NANOFT_TRITON_AUTOTUNE", "1") != "0" and not INTERPRET


def _configs(tuned, fixed):
    """Autotuning space on a GPU, one fixed config without autotuning, tiles of 16 under the interpreter.
    Each entry is (BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in (tuned if AUTOTUNE else [fixed])]


FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 4), (128, 32, 4, 4)],
                       (128, 64, 4, 3))
# the dK/dV kernel owns BLOCK_N keys and walks BLOCK_M queries; the dQ kernel the other way round
BWD_KV_CONFIGS = _configs([(32, 128, 4, 3), (64, 128, 8, 3), (32, 64, 4, 4), (64, 64, 4, 3)], (32, 64, 4, 3))
BWD_Q_CONFIGS = _configs([(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4), (64, 32, 4, 3)], (64, 32, 4, 3))
# tuned per power-of-two length bucket, not per length: a new batch length must not re-run autotuning
TUNE_KEY = ["tune_len", "HEAD_DIM", "CAUSAL", "HAS_WINDOW", "HAS_SEQLENS", "VARLEN", "HAS_DROPOUT", "HAS_KPM"]


# ----------------------------------------------------------------------------------------------
# device helpers


@triton.jit
def _sequence(pid_bh, H, seq_q, seq_k, SEQLENS, CU_SEQLENS, HAS_SEQLENS: tl.constexpr, VARLEN: tl.constexpr):
    """(batch, head, first token, query length, key length) of the sequence a program works on."""
    b = pid_bh // H
    h = pid_bh % H
    if VARLEN:
        first = tl.load(CU_SEQLENS + b)
        len_q = tl.load(CU_SEQLENS + b + 1) - first
        len_k = len_q
        start = first.to(tl.int64)  # token offsets into a large packed batch can pass 2**31 elements
    else:
        start = 0
        len_q = seq_q
        len_k = seq_k
        if HAS_SEQLENS:
            len_k = tl.load(SEQLENS + b)
    return b, h, start, len_q, len_k


@triton.jit
def _row_mask(KPM, DENSE, b, stride_mb, HAS_KPM: tl.constexpr):
    """(pointer to row b of the key padding mask, whether row b is right-padded: real keys, then padding)."""
    kpm_row = KPM + b * stride_mb
    dense = True
    if HAS_KPM:
        dense = tl.load(DENSE + b) != 0
    return kpm_row, dense


@triton.jit
def _allowed(offs_m, offs_n, len_k, window, num_global, kpm_row, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
             HAS_KPM: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: may query offs_m[i] attend to key offs_n[j]?"""
    ok = offs_n[None, :] < len_k
    if HAS_KPM:  # padding before the row's end (uint8 mask, 1 = padding)
        ok = ok & (tl.load(kpm_row + offs_n, mask=offs_n < len_k, other=1) == 0)[None, :]
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None])
    if HAS_WINDOW:
        diff = offs_m[:, None] - offs_n[None, :]
        band = (diff <= window) & (diff >= -window)
        glob = (offs_m[:, None] < num_global) | (offs_n[None, :] < num_global)
        ok = ok & (band | glob)
    return ok


@triton.jit
def _keep(seed, rng_row, offs_n, rng_stride, dropout_p):
    """Dropout keep-mask (BLOCK_M, BLOCK_N): Philox of the counter row * rng_stride + key, compared with p."""
    counter = rng_row.to(tl.int64)[:, None] * rng_stride + offs_n[None, :]
    return tl.rand(seed, counter) >= dropout_p


@triton.jit
def _key_ranges(m0, len_k, window, num_global, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key blocks a query block [m0, m0 + BLOCK_M) visits, as three ranges:
    [0, glob_hi) global keys (masked), [0, full_hi) fully visible (unmasked), [edge_lo, hi) masked."""
    hi = len_k
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M)
    if HAS_WINDOW:
        lo = tl.maximum(m0 - window, 0)
        hi_band = tl.minimum(hi, m0 + BLOCK_M + window)
        has_global_query = m0 < num_global
        lo = tl.where(has_global_query, 0, lo)
        hi = tl.where(has_global_query, hi, hi_band)
        edge_lo = (lo // BLOCK_N) * BLOCK_N
        glob_hi = tl.minimum(tl.cdiv(num_global, BLOCK_N) * BLOCK_N, edge_lo)
        full_hi = 0
    else:
        full_hi = (len_k // BLOCK_N) * BLOCK_N
        if CAUSAL:
            full_hi = tl.minimum(full_hi, ((m0 + 1) // BLOCK_N) * BLOCK_N)
        edge_lo = full_hi
        glob_hi = 0
    return glob_hi, full_hi, edge_lo, hi


@triton.jit
def _query_ranges(n0, len_q, len_k, window, num_global, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Query blocks that see key block [n0, n0 + BLOCK_N), as three ranges:
    [0, glob_hi) global queries (masked), [edge_lo, mask_hi) masked, [mask_hi, hi) unmasked."""
    hi = tl.where(n0 < len_k, len_q, 0)  # a fully padded key block is seen by nobody
    lo = 0
    if CAUSAL:
        lo = n0
    if HAS_WINDOW:
        lo_band = tl.maximum(lo, n0 - window)
        hi_band = tl.minimum(hi, n0 + BLOCK_N + window)
        has_global_key = n0 < num_global
        lo = tl.where(has_global_key, lo, lo_band)
        hi = tl.where(has_global_key, hi, hi_band)
        edge_lo = (lo // BLOCK_M) * BLOCK_M
        glob_hi = tl.minimum(tl.cdiv(num_global, BLOCK_M) * BLOCK_M, edge_lo)
        mask_hi = hi
    else:
        edge_lo = (lo // BLOCK_M) * BLOCK_M
        glob_hi = 0
        mask_hi = edge_lo
        if CAUSAL:  # query blocks starting at or after the block's last key see all of it
            mask_hi = tl.cdiv(n0 + BLOCK_N - 1, BLOCK_M) * BLOCK_M
        mask_hi = tl.where(n0 + BLOCK_N > len_k, hi, mask_hi)  # a partly padded key block needs the mask
        mask_hi = tl.minimum(mask_hi, hi)
    return glob_hi, edge_lo, mask_hi, hi


@triton.jit
def _unmasked_keys(full_hi, edge_lo, dense, HAS_WINDOW: tl.constexpr, HAS_KPM: tl.constexpr):
    """A row with padding before its end has no fully visible key block: every block takes the mask."""
    if HAS_KPM:
        if not HAS_WINDOW:  # (with a window every block is masked already)
            full_hi = tl.where(dense, full_hi, 0)
            edge_lo = tl.where(dense, edge_lo, 0)
    return full_hi, edge_lo


# ----------------------------------------------------------------------------------------------
# forward


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, lo, hi, len_k, qk_scale,
               window, num_global, seed, rng_row, rng_stride, dropout_p, kpm_row,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_KPM: tl.constexpr):
    """Fold key blocks [lo, hi) into the running (acc, m, l) of one query block."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kt_ptrs = k_base + offs_n[None, :] * stride_ks + offs_d[:, None]  # (HEAD_DIM, BLOCK_N)
        v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]   # (BLOCK_N, HEAD_DIM)
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < len_k, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < len_k, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, kt) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 logits
        if MASKED:
            qk = tl.where(_allowed(offs_m, offs_n, len_k, window, num_global, kpm_row, CAUSAL, HAS_WINDOW, HAS_KPM),
                          qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet stay at zero
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = _keep(seed, rng_row, offs_n, rng_stride, dropout_p)
            p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, m_i, l_i


@triton.autotune(configs=FWD_CONFIGS, key=TUNE_KEY)
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, SEQLENS, CU_SEQLENS, KPM, DENSE, stride_mb,
                stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
                H, seq_q, seq_k, qk_scale, window, num_global, seed, rng_stride, dropout_p, tune_len,
                HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SEQLENS: tl.constexpr,
                VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_KPM: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    b, h, start, len_q, len_k = _sequence(tl.program_id(1), H, seq_q, seq_k, SEQLENS, CU_SEQLENS, HAS_SEQLENS, VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= len_q:
        return
    b = b.to(tl.int64)
    kpm_row, dense = _row_mask(KPM, DENSE, b, stride_mb, HAS_KPM)
    q_base = Q + b * stride_qb + h * stride_qh + start * stride_qs
    k_base = K + b * stride_kb + h * stride_kh + start * stride_ks
    v_base = V + b * stride_vb + h * stride_vh + start * stride_vs
    lse_base = LSE + b * stride_lb + h * stride_lh + start

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < len_q
    q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    rng_row = b * stride_lb + h * stride_lh + start + offs_m  # a counter row unique to (batch, head, query)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    glob_hi, full_hi, edge_lo, hi = _key_ranges(m0, len_k, window, num_global, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    full_hi, edge_lo = _unmasked_keys(full_hi, edge_lo, dense, HAS_WINDOW, HAS_KPM)
    if HAS_WINDOW:
        acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, 0, glob_hi,
                                   len_k, qk_scale, window, num_global, seed, rng_row, rng_stride, dropout_p, kpm_row,
                                   BLOCK_N, HEAD_DIM, True, CAUSAL, HAS_WINDOW, HAS_DROPOUT, HAS_KPM)
    else:
        acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, 0, full_hi,
                                   len_k, qk_scale, window, num_global, seed, rng_row, rng_stride, dropout_p, kpm_row,
                                   BLOCK_N, HEAD_DIM, False, CAUSAL, HAS_WINDOW, HAS_DROPOUT, HAS_KPM)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, edge_lo, hi,
                               len_k, qk_scale, window, num_global, seed, rng_row, rng_stride, dropout_p, kpm_row,
                               BLOCK_N, HEAD_DIM, True, CAUSAL, HAS_WINDOW, HAS_DROPOUT, HAS_KPM)

    empty = l_i == 0.0  # no visible key: output 0, and lse = +inf makes every recomputed probability 0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    o_base = O + b * stride_ob + h * stride_oh + start * stride_os
    tl.store(o_base + offs_m[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_base + offs_m, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------
# backward


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, SEQLENS, CU_SEQLENS, stride_ob, stride_oh, stride_os,
                      stride_dob, stride_doh, stride_dos, stride_lb, stride_lh, H, seq_q, seq_k,
                      HEAD_DIM: tl.constexpr, HAS_SEQLENS: tl.constexpr, VARLEN: tl.constexpr,
                      BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O): the softmax-gradient correction term, one per query row."""
    b, h, start, len_q, len_k = _sequence(tl.program_id(1), H, seq_q, seq_k, SEQLENS, CU_SEQLENS, HAS_SEQLENS, VARLEN)
    m0 = tl.program_id(0) * BLOCK_M
    if m0 >= len_q:
        return
    b = b.to(tl.int64)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < len_q
    o = tl.load(O + b * stride_ob + h * stride_oh + (start + offs_m[:, None]) * stride_os + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + (start + offs_m[:, None]) * stride_dos + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + b * stride_lb + h * stride_lh + start + offs_m, delta, mask=row_ok)


@triton.jit
def _bwd_kv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, offs_n, lo, hi,
                  len_q, len_k, qk_scale, window, num_global, seed, rng_row0, rng_stride, dropout_p, kpm_row,
                  BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                  HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_KPM: tl.constexpr):
    """Accumulate dK, dV of one key block over query blocks [lo, hi); tiles are transposed (keys, queries)."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < len_q
        qt = tl.load(q_base + offs_m[None, :] * stride_qs + offs_d[:, None], mask=row_ok[None, :], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dos + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        lse2 = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        pt = tl.math.exp2(tl.dot(k, qt) * qk_scale - lse2[None, :])  # (BLOCK_N, BLOCK_M) probabilities
        if MASKED:
            allowed = tl.trans(_allowed(offs_m, offs_n, len_k, window, num_global, kpm_row, CAUSAL, HAS_WINDOW,
                                        HAS_KPM))
            pt = tl.where(allowed, pt, 0.0)
        dpt = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        if HAS_DROPOUT:
            keep = tl.trans(_keep(seed, rng_row0 + offs_m, offs_n, rng_stride, dropout_p))
            dv += tl.dot(tl.where(keep, pt / (1.0 - dropout_p), 0.0).to(do.dtype), do)
            dpt = tl.where(keep, dpt / (1.0 - dropout_p), 0.0)
        else:
            dv += tl.dot(pt.to(do.dtype), do)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt))
    return dk, dv


@triton.autotune(configs=BWD_KV_CONFIGS, key=TUNE_KEY)
@triton.jit
def _bwd_kv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, SEQLENS, CU_SEQLENS, KPM, DENSE, stride_mb,
                   stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                   stride_vb, stride_vh, stride_vs, stride_dob, stride_doh, stride_dos,
                   stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs, stride_lb, stride_lh,
                   H, seq_q, seq_k, qk_scale, scale, window, num_global, seed, rng_stride, dropout_p, tune_len,
                   HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   HAS_SEQLENS: tl.constexpr, VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                   HAS_KPM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, start, len_q, len_k = _sequence(tl.program_id(1), H, seq_q, seq_k, SEQLENS, CU_SEQLENS, HAS_SEQLENS, VARLEN)
    n0 = tl.program_id(0) * BLOCK_N
    n_rows = seq_k  # rows this program must write: padded keys get zero gradients
    if VARLEN:
        n_rows = len_k
    if n0 >= n_rows:
        return
    b = b.to(tl.int64)
    kpm_row, dense = _row_mask(KPM, DENSE, b, stride_mb, HAS_KPM)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < len_k
    k = tl.load(K + b * stride_kb + h * stride_kh + (start + offs_n[:, None]) * stride_ks + offs_d[None, :],
                mask=key_ok[:, None], other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + (start + offs_n[:, None]) * stride_vs + offs_d[None, :],
                mask=key_ok[:, None], other=0.0)
    q_base = Q + b * stride_qb + h * stride_qh + start * stride_qs
    do_base = DO + b * stride_dob + h * stride_doh + start * stride_dos
    lse_base = LSE + b * stride_lb + h * stride_lh + start
    delta_base = DELTA + b * stride_lb + h * stride_lh + start
    rng_row0 = b * stride_lb + h * stride_lh + start

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    glob_hi, edge_lo, mask_hi, hi = _query_ranges(n0, len_q, len_k, window, num_global, BLOCK_M, BLOCK_N,
                                                  CAUSAL, HAS_WINDOW)
    if HAS_KPM:
        if not HAS_WINDOW:  # padding before the row's end: every query block takes the mask
            mask_hi = tl.where(dense, mask_hi, hi)
    if HAS_WINDOW:
        dk, dv = _bwd_kv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, offs_n,
                               0, glob_hi, len_q, len_k, qk_scale, window, num_global, seed, rng_row0, rng_stride,
                               dropout_p, kpm_row, BLOCK_M, HEAD_DIM, True, CAUSAL, HAS_WINDOW, HAS_DROPOUT,
                               HAS_KPM)
    dk, dv = _bwd_kv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, offs_n,
                           edge_lo, mask_hi, len_q, len_k, qk_scale, window, num_global, seed, rng_row0, rng_stride,
                           dropout_p, kpm_row, BLOCK_M, HEAD_DIM, True, CAUSAL, HAS_WINDOW, HAS_DROPOUT, HAS_KPM)
    if not HAS_WINDOW:
        dk, dv = _bwd_kv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, offs_n,
                               mask_hi, hi, len_q, len_k, qk_scale, window, num_global, seed, rng_row0, rng_stride,
                               dropout_p, kpm_row, BLOCK_M, HEAD_DIM, False, CAUSAL, HAS_WINDOW, HAS_DROPOUT,
                               HAS_KPM)

    write_ok = offs_n[:, None] < n_rows
    dk_ptrs = DK + b * stride_dkb + h * stride_dkh + (start + offs_n[:, None]) * stride_dks + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + h * stride_dvh + (start + offs_n[:, None]) * stride_dvs + offs_d[None, :]
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=write_ok)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=write_ok)


@triton.jit
def _bwd_q_inner(dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, lo, hi, len_k, qk_scale,
                 window, num_global, seed, rng_row, rng_stride, dropout_p, kpm_row,
                 BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_KPM: tl.constexpr):
    """Accumulate dQ of one query block over key blocks [lo, hi)."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kt_ptrs = k_base + offs_n[None, :] * stride_ks + offs_d[:, None]   # (HEAD_DIM, BLOCK_N)
        vt_ptrs = v_base + offs_n[None, :] * stride_vs + offs_d[:, None]
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < len_k, other=0.0)
            vt = tl.load(vt_ptrs, mask=offs_n[None, :] < len_k, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        p = tl.math.exp2(tl.dot(q, kt) * qk_scale - lse2[:, None])  # (BLOCK_M, BLOCK_N)
        if MASKED:
            p = tl.where(_allowed(offs_m, offs_n, len_k, window, num_global, kpm_row, CAUSAL, HAS_WINDOW, HAS_KPM),
                         p, 0.0)
        dp = tl.dot(do, vt)
        if HAS_DROPOUT:
            keep = _keep(seed, rng_row, offs_n, rng_stride, dropout_p)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt))
    return dq


@triton.autotune(configs=BWD_Q_CONFIGS, key=TUNE_KEY)
@triton.jit
def _bwd_q_kernel(Q, K, V, DO, DQ, LSE, DELTA, SEQLENS, CU_SEQLENS, KPM, DENSE, stride_mb,
                  stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                  stride_vb, stride_vh, stride_vs, stride_dob, stride_doh, stride_dos,
                  stride_dqb, stride_dqh, stride_dqs, stride_lb, stride_lh,
                  H, seq_q, seq_k, qk_scale, scale, window, num_global, seed, rng_stride, dropout_p, tune_len,
                  HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  HAS_SEQLENS: tl.constexpr, VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                  HAS_KPM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, start, len_q, len_k = _sequence(tl.program_id(1), H, seq_q, seq_k, SEQLENS, CU_SEQLENS, HAS_SEQLENS, VARLEN)
    m0 = tl.program_id(0) * BLOCK_M
    if m0 >= len_q:
        return
    b = b.to(tl.int64)
    kpm_row, dense = _row_mask(KPM, DENSE, b, stride_mb, HAS_KPM)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < len_q
    q = tl.load(Q + b * stride_qb + h * stride_qh + (start + offs_m[:, None]) * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + (start + offs_m[:, None]) * stride_dos + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    row = b * stride_lb + h * stride_lh + start + offs_m
    lse2 = tl.load(LSE + row, mask=row_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + row, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh + start * stride_ks
    v_base = V + b * stride_vb + h * stride_vh + start * stride_vs

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    glob_hi, full_hi, edge_lo, hi = _key_ranges(m0, len_k, window, num_global, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    full_hi, edge_lo = _unmasked_keys(full_hi, edge_lo, dense, HAS_WINDOW, HAS_KPM)
    if HAS_WINDOW:
        dq = _bwd_q_inner(dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, 0, glob_hi, len_k,
                          qk_scale, window, num_global, seed, row, rng_stride, dropout_p, kpm_row,
                          BLOCK_N, HEAD_DIM, True, CAUSAL, HAS_WINDOW, HAS_DROPOUT, HAS_KPM)
    else:
        dq = _bwd_q_inner(dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, 0, full_hi, len_k,
                          qk_scale, window, num_global, seed, row, rng_stride, dropout_p, kpm_row,
                          BLOCK_N, HEAD_DIM, False, CAUSAL, HAS_WINDOW, HAS_DROPOUT, HAS_KPM)
    dq = _bwd_q_inner(dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, edge_lo, hi, len_k,
                      qk_scale, window, num_global, seed, row, rng_stride, dropout_p, kpm_row,
                      BLOCK_N, HEAD_DIM, True, CAUSAL, HAS_WINDOW, HAS_DROPOUT, HAS_KPM)
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + (start + offs_m[:, None]) * stride_dqs + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _keep_mask_kernel(OUT, seq_q, seq_k, seed, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Write the dropout keep-mask of a dense (batch, heads, seq_q, seq_k) call, for references and tests."""
    pid_bh = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rng_row = pid_bh * seq_q + offs_m  # the forward's row counter: (batch * heads + head) * seq_q + query
    for start_n in range(0, seq_k, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = _keep(seed, rng_row, offs_n, seq_k, dropout_p)
        ptrs = OUT + rng_row.to(tl.int64)[:, None] * seq_k + offs_n[None, :]
        tl.store(ptrs, keep.to(tl.int8), mask=(offs_m[:, None] < seq_q) & (offs_n[None, :] < seq_k))


# ----------------------------------------------------------------------------------------------
# host side


@dataclass(frozen=True)
class FlashParams:
    """Everything about a call that is not a tensor."""
    scale: float
    causal: bool = False
    window: Optional[int] = None
    num_global: int = 0
    dropout_p: float = 0.0
    seed: int = 0


def _strides3(t: torch.Tensor, varlen: bool) -> Tuple[int, int, int]:
    """(batch, head, sequence) strides: (b, h, s, d) dense, or (total, h, d) packed with no batch stride."""
    if varlen:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _flags(p: FlashParams, seqlens: Optional[torch.Tensor], varlen: bool, kpm: Optional[torch.Tensor]) -> dict:
    return dict(CAUSAL=p.causal, HAS_WINDOW=p.window is not None, HAS_SEQLENS=seqlens is not None,
                VARLEN=varlen, HAS_DROPOUT=p.dropout_p > 0.0, HAS_KPM=kpm is not None)


def _mask_args(kpm: Optional[torch.Tensor], dense: Optional[torch.Tensor], unused: torch.Tensor) -> tuple:
    """(KPM, DENSE, stride_mb) kernel arguments: the uint8 mask (1 = padding) and per-row right-padded flags."""
    if kpm is None:
        return unused, unused, 0
    return kpm, dense, kpm.stride(0)


def _scalars(p: FlashParams, seq_q: int, seq_k: int) -> dict:
    """Runtime scalars shared by the autotuned kernels; tune_len only selects the autotuning bucket."""
    return dict(window=p.window if p.window is not None else 0, num_global=p.num_global, seed=p.seed,
                dropout_p=p.dropout_p, tune_len=triton.next_power_of_2(max(seq_q, seq_k, 16)))


def _forward(q, k, v, seqlens, cu_seqlens, max_seqlen, p: FlashParams, kpm=None, dense=None):
    """Launch the forward; returns (out, lse). lse is (batch, heads, seq_q) dense or (heads, total) packed."""
    varlen = cu_seqlens is not None
    out = torch.empty_like(q)
    if varlen:
        batch, heads, seq_q, seq_k = cu_seqlens.numel() - 1, q.shape[1], max_seqlen, max_seqlen
        lse = torch.empty(heads, q.shape[0], device=q.device, dtype=torch.float32)
        stride_lb, stride_lh, rng_stride = 0, lse.stride(0), max_seqlen
    else:
        batch, heads, seq_q, seq_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        lse = torch.empty(batch, heads, seq_q, device=q.device, dtype=torch.float32)
        stride_lb, stride_lh, rng_stride = lse.stride(0), lse.stride(1), seq_k
    unused = q  # stands in for the pointer arguments a variant never reads (no allocation per call)

    def grid(meta):
        return (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)

    _fwd_kernel[grid](q, k, v, out, lse, seqlens if seqlens is not None else unused,
                      cu_seqlens if varlen else unused, *_mask_args(kpm, dense, unused),
                      *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen), *_strides3(out, varlen),
                      stride_lb, stride_lh, heads, seq_q, seq_k, p.scale * LOG2E, rng_stride=rng_stride,
                      HEAD_DIM=q.shape[-1], **_scalars(p, seq_q, seq_k), **_flags(p, seqlens, varlen, kpm))
    return out, lse


def _backward(do, q, k, v, out, lse, seqlens, cu_seqlens, max_seqlen, p: FlashParams, kpm=None, dense=None):
    """Launch delta, dK/dV and dQ kernels; returns (dq, dk, dv)."""
    varlen = cu_seqlens is not None
    do = _last_dim_contiguous(do)
    if varlen:
        batch, heads, seq_q, seq_k, rng_stride = cu_seqlens.numel() - 1, q.shape[1], max_seqlen, max_seqlen, max_seqlen
    else:
        batch, heads, seq_q, seq_k, rng_stride = q.shape[0], q.shape[1], q.shape[2], k.shape[2], k.shape[2]
    stride_lb, stride_lh = (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))
    seqlens_arg = seqlens if seqlens is not None else q  # q stands in for pointers a variant never reads
    cu_arg = cu_seqlens if varlen else q
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    flags = _flags(p, seqlens, varlen, kpm)
    mask_args = _mask_args(kpm, dense, q)

    delta_block = 16 if INTERPRET else 64
    _bwd_delta_kernel[(triton.cdiv(seq_q, delta_block), batch * heads)](
        out, do, delta, seqlens_arg, cu_arg, *_strides3(out, varlen), *_strides3(do, varlen), stride_lb, stride_lh,
        heads, seq_q, seq_k, HEAD_DIM=q.shape[-1], HAS_SEQLENS=seqlens is not None, VARLEN=varlen,
        BLOCK_M=delta_block)
    _bwd_kv_kernel[lambda meta: (triton.cdiv(seq_k, meta["BLOCK_N"]), batch * heads)](
        q, k, v, do, dk, dv, lse, delta, seqlens_arg, cu_arg, *mask_args,
        *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen), *_strides3(do, varlen),
        *_strides3(dk, varlen), *_strides3(dv, varlen), stride_lb, stride_lh,
        heads, seq_q, seq_k, p.scale * LOG2E, p.scale, rng_stride=rng_stride, HEAD_DIM=q.shape[-1],
        **_scalars(p, seq_q, seq_k), **flags)
    _bwd_q_kernel[lambda meta: (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)](
        q, k, v, do, dq, lse, delta, seqlens_arg, cu_arg, *mask_args,
        *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen), *_strides3(do, varlen),
        *_strides3(dq, varlen), stride_lb, stride_lh,
        heads, seq_q, seq_k, p.scale * LOG2E, p.scale, rng_stride=rng_stride, HEAD_DIM=q.shape[-1],
        **_scalars(p, seq_q, seq_k), **flags)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, out and logsumexp; the backward recomputes probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, seqlens, cu_seqlens, max_seqlen, params: FlashParams, kpm=None, dense=None):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse = _forward(q, k, v, seqlens, cu_seqlens, max_seqlen, params, kpm, dense)
        ctx.save_for_backward(q, k, v, out, lse, seqlens, cu_seqlens, kpm, dense)
        ctx.max_seqlen = max_seqlen
        ctx.params = params
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, out, lse, seqlens, cu_seqlens, kpm, dense = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, out, lse, seqlens, cu_seqlens, ctx.max_seqlen, ctx.params, kpm, dense)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, seqlens: Optional[torch.Tensor],
                    scale: float, causal: bool = False, window: Optional[int] = None, num_global: int = 0,
                    dropout_p: float = 0.0, seed: int = 0, key_padding_mask: Optional[torch.Tensor] = None,
                    dense: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Padded layout (batch, heads, seq, d); `seqlens` (batch,) int32 one past each row's last real key, or
    None. With `key_padding_mask` (batch, seq_k) bool and `dense` (batch,) int32 (1: the row is right-padded;
    see nanoft.kernels.checks.key_ends) rows with padding before their end are masked key by key. Inputs are
    assumed checked (see nanoft.kernels.attention)."""
    params = FlashParams(scale=scale, causal=causal, window=window, num_global=num_global, dropout_p=dropout_p,
                         seed=seed)
    kpm = None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    return FlashAttention.apply(q, k, v, seqlens, None, 0, params, kpm, dense)


def flash_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_seqlen: int, *, scale: float, causal: bool = False, window: Optional[int] = None,
                           num_global: int = 0, dropout_p: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Packed layout (total_tokens, heads, d) with int32 offsets `cu_seqlens` (batch + 1,)."""
    params = FlashParams(scale=scale, causal=causal, window=window, num_global=num_global, dropout_p=dropout_p,
                         seed=seed)
    return FlashAttention.apply(q, k, v, None, cu_seqlens, int(max_seqlen), params)


def dropout_keep_mask(seed: int, batch: int, heads: int, seq_q: int, seq_k: int, dropout_p: float,
                      device: torch.device) -> torch.Tensor:
    """(batch, heads, seq_q, seq_k) bool keep-mask the dense kernels draw for `seed` and `dropout_p`."""
    out = torch.empty(batch, heads, seq_q, seq_k, dtype=torch.int8, device=device)
    block = 16 if INTERPRET else 64
    _keep_mask_kernel[(triton.cdiv(seq_q, block), batch * heads)](out, seq_q, seq_k, seed, dropout_p,
                                                                  BLOCK_M=block, BLOCK_N=block)
    return out.bool()
