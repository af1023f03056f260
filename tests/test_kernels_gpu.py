"""nanoft.kernels on CUDA: the Triton kernels in fp16/bf16 at real sizes against the fp32 reference.

Tolerance, as in the FlashAttention test-suite: the kernel's error against the fp32 reference may be at
most a few times the error of the same math done naively in the low precision (plus a small floor), so
the bound follows what fp16/bf16 can give rather than a number picked to pass.
"""
from __future__ import annotations

import importlib.util
import math
import os

# one block config per kernel: compiling every autotuning candidate for each test's shape would take minutes
os.environ.setdefault("NANOFT_TRITON_AUTOTUNE", "0")

import pytest
import torch
import torch.nn.functional as F

from nanoft import kernels
from nanoft.kernels import allowed_mask, reference_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
]
DTYPES = [torch.float16, torch.bfloat16]


def _low_precision(q, k, v, dropout_p=0.0, keep=None, **mask_kw):
    """The reference's math in q's dtype (scores and products rounded like a naive implementation)."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    allowed = allowed_mask(q.shape[-2], k.shape[-2], device=q.device, **mask_kw)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if keep is not None:
        probs = probs * keep / (1.0 - dropout_p)
    return probs @ v


def _run(fn, q, k, v, grad_out):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def _check(kernel, naive, q, k, v, factor=3.0):
    """kernel and naive run on the low-precision inputs; the truth runs in fp32 on the same values."""
    grad_out = torch.randn_like(q)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    truth = _run(naive, q32, k32, v32, grad_out.float())
    got = _run(kernel, q, k, v, grad_out)
    base = _run(naive, q, k, v, grad_out)
    for name, g, b, t in zip(("out", "dq", "dk", "dv"), got, base, truth):
        err, base_err = (g.float() - t).abs().max().item(), (b.float() - t).abs().max().item()
        floor = 1e-3 * max(1.0, t.abs().max().item())
        assert err <= factor * base_err + floor, f"{name}: error {err:.2e} vs naive low-precision {base_err:.2e}"


def _qkv(batch, heads, seq, dim, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(batch, heads, seq, dim, device="cuda", dtype=dtype, generator=gen).requires_grad_()
            for _ in range(3)]


def _padding(lengths, seq):
    return torch.arange(seq, device="cuda")[None, :] >= torch.tensor(lengths, device="cuda")[:, None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [32, 64, 128])
def test_padded_matches_reference(dtype, dim):
    q, k, v = _qkv(4, 4, 1000, dim, dtype)
    mask = _padding([1000, 1, 333, 777], 1000)
    _check(lambda *t: kernels.attention(*t, key_padding_mask=mask, impl="triton"),
           lambda *t: _low_precision(*t, key_padding_mask=mask), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_long_sequence(dtype):
    q, k, v = _qkv(1, 4, 4096, 128, dtype)
    _check(lambda *t: kernels.attention(*t, impl="triton"), _low_precision, q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_matches_reference(dtype):
    q, k, v = _qkv(2, 4, 777, 64, dtype)
    mask = _padding([777, 500], 777)
    _check(lambda *t: kernels.attention(*t, key_padding_mask=mask, causal=True, impl="triton"),
           lambda *t: _low_precision(*t, key_padding_mask=mask, causal=True), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sliding_window_with_global_tokens(dtype):
    q, k, v = _qkv(2, 4, 1500, 64, dtype)
    mask = _padding([1500, 1100], 1500)
    kw = dict(key_padding_mask=mask, window=128, num_global=3)
    _check(lambda *t: kernels.attention(*t, **kw, impl="triton"), lambda *t: _low_precision(*t, **kw), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_equals_padded(dtype):
    lengths = [600, 1, 257, 64, 513]
    seq = max(lengths)
    q, k, v = _qkv(len(lengths), 4, seq, 64, dtype)
    mask = _padding(lengths, seq)
    out = kernels.attention(q, k, v, key_padding_mask=mask, impl="triton")
    grad_out = torch.randn_like(out).masked_fill(mask[:, None, :, None], 0.0)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    def pack(x):  # (batch, heads, seq, d) -> (total_tokens, heads, d)
        return torch.cat([x[b, :, :n].transpose(0, 1) for b, n in enumerate(lengths)], dim=0)

    cu = F.pad(torch.tensor(lengths, device="cuda").cumsum(0), (1, 0)).to(torch.int32)
    packed = [pack(t.detach()).requires_grad_() for t in (q, k, v)]
    out_p = kernels.varlen_attention(*packed, cu, seq, impl="triton")
    grads_p = torch.autograd.grad(out_p, packed, pack(grad_out))
    # same kernel, same tiles per sequence: equal up to accumulation order across blocks
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    for got, want in zip((out_p, *grads_p), (out, *grads)):
        assert (got.float() - pack(want).float()).abs().max().item() < tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_matches_reference_with_kernel_mask(dtype):
    p, seed = 0.1, 2024
    q, k, v = _qkv(2, 4, 300, 64, dtype)
    keep = kernels.dropout_keep_mask(seed, 2, 4, 300, 300, p, "cuda")
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    _check(lambda *t: kernels.attention(*t, dropout_p=p, dropout_seed=seed, impl="triton"),
           lambda *t: _low_precision(*t, dropout_p=p, keep=keep), q, k, v)


def test_auto_picks_triton_on_cuda():
    q, k, v = (t.detach() for t in _qkv(2, 2, 100, 64, torch.bfloat16))
    mask = _padding([100, 40], 100)
    auto = kernels.attention(q, k, v, key_padding_mask=mask)
    assert torch.equal(auto, kernels.attention(q, k, v, key_padding_mask=mask, impl="triton"))
    ref = reference_attention(q, k, v, key_padding_mask=mask)
    assert (auto.float() - ref.float()).abs().max().item() < 2e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{}, dict(causal=True), dict(window=64, num_global=2)])
def test_any_mask_through_auto(dtype, kw):
    """impl="auto" hands every mask to the kernels without looking at it: right-padded, left-padded, with
    holes across tiles; rows whose queries all see a key (an all-padding row is checked on CPU)."""
    seq = 700
    q, k, v = _qkv(3, 4, seq, 64, dtype)
    mask = torch.zeros(3, seq, dtype=torch.bool, device="cuda")
    mask[0, 500:] = True  # right padding
    if kw.get("causal"):
        mask[1, 300:350] = True  # (left padding would leave causal queries with no key at all)
    else:
        mask[1, :40] = True  # left padding
    mask[2, 100:230] = True  # a hole across tiles, then right padding
    mask[2, 650:] = True
    _check(lambda *t: kernels.attention(*t, key_padding_mask=mask, **kw),
           lambda *t: _low_precision(*t, key_padding_mask=mask, **kw), q, k, v)


def test_auto_reads_no_mask_back():
    """The padded path never waits for the device: CUDA's sync debug mode sees no synchronising call."""
    q, k, v = _qkv(2, 4, 300, 64, torch.bfloat16)
    mask = _padding([300, 123], 300)
    kernels.attention(q, k, v, key_padding_mask=mask).sum().backward()  # compile and tune first
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = kernels.attention(q, k, v, key_padding_mask=mask)
        torch.autograd.grad(out.sum(), (q, k, v))
    finally:
        torch.cuda.set_sync_debug_mode("default")
