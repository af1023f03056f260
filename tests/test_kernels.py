"""nanoft.kernels on CPU: the Triton kernels run through the Triton interpreter (fp32, tiles of 16) and are
compared with the plain-PyTorch reference, forward and dQ/dK/dV; the SDPA path and bad inputs too.

The interpreter is picked when `nanoft.kernels.flash` is imported (at @triton.jit time), so the variable is
set here before anything imports it. On a CUDA machine these interpreter tests are skipped: the same
properties are checked there in fp16/bf16 by test_kernels_gpu.py.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nanoft import kernels  # noqa: E402
from nanoft.errors import ConfigError  # noqa: E402
from nanoft.kernels import reference_attention  # noqa: E402


def _interpreter_ready() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    from nanoft.kernels import flash
    return flash.INTERPRET


needs_interpreter = pytest.mark.skipif(not _interpreter_ready(),
                                       reason="needs triton in interpreter mode (TRITON_INTERPRET=1, no CUDA)")
TOL = 1e-4  # fp32 through the interpreter: only summation order differs from the reference


def _qkv(batch, heads, seq_q, dim, seq_k=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seq_k = seq_q if seq_k is None else seq_k
    q = torch.randn(batch, heads, seq_q, dim, generator=gen)
    k = torch.randn(batch, heads, seq_k, dim, generator=gen)
    v = torch.randn(batch, heads, seq_k, dim, generator=gen)
    return [t.requires_grad_() for t in (q, k, v)]


def _padding(lengths, seq):
    """key_padding_mask (True = pad) with right padding for the given lengths."""
    return torch.arange(seq)[None, :] >= torch.tensor(lengths)[:, None]


def _outputs_and_grads(fn, q, k, v, seed=1):
    out = fn(q, k, v)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def _assert_matches(fn, ref, q, k, v, tol=TOL):
    names = ("out", "dq", "dk", "dv")
    for name, got, want in zip(names, _outputs_and_grads(fn, q, k, v), _outputs_and_grads(ref, q, k, v)):
        err = (got - want).abs().max().item()
        assert err < tol, f"{name}: max abs error {err:.2e} >= {tol:.0e}"


@needs_interpreter
@pytest.mark.parametrize("seq,dim", [(16, 32), (37, 32), (50, 64)])
def test_padded_matches_reference(seq, dim):
    """Key padding with lengths seq, 1 and a middle one; seq not a multiple of the block for 37 and 50."""
    q, k, v = _qkv(3, 2, seq, dim)
    mask = _padding([seq, 1, seq // 2 + 3], seq)
    _assert_matches(lambda *t: kernels.attention(*t, key_padding_mask=mask, impl="triton"),
                    lambda *t: reference_attention(*t, key_padding_mask=mask), q, k, v)


@needs_interpreter
def test_dense_with_scale_and_cross_lengths():
    """No mask, a custom softmax scale, and seq_q != seq_k."""
    q, k, v = _qkv(2, 2, 21, 32, seq_k=40)
    _assert_matches(lambda *t: kernels.attention(*t, scale=0.3, impl="triton"),
                    lambda *t: reference_attention(*t, scale=0.3), q, k, v)


@needs_interpreter
@pytest.mark.parametrize("padded", [False, True])
def test_causal_matches_reference(padded):
    q, k, v = _qkv(2, 2, 37, 32)
    mask = _padding([37, 20], 37) if padded else None
    _assert_matches(lambda *t: kernels.attention(*t, key_padding_mask=mask, causal=True, impl="triton"),
                    lambda *t: reference_attention(*t, key_padding_mask=mask, causal=True), q, k, v)


@needs_interpreter
@pytest.mark.parametrize("window,num_global,lengths", [(3, 0, None), (20, 0, None), (4, 2, [45, 1]), (5, 17, [45, 30])])
def test_sliding_window_matches_band_mask(window, num_global, lengths):
    """Window w (and a prefix of global tokens) equals the reference with a band mask |i - j| <= w."""
    q, k, v = _qkv(2, 2, 45, 32)
    mask = None if lengths is None else _padding(lengths, 45)
    kw = dict(key_padding_mask=mask, window=window, num_global=num_global)
    _assert_matches(lambda *t: kernels.attention(*t, **kw, impl="triton"),
                    lambda *t: reference_attention(*t, **kw), q, k, v)


@needs_interpreter
def test_sliding_window_causal():
    q, k, v = _qkv(1, 2, 40, 32)
    kw = dict(window=6, num_global=1, causal=True)
    _assert_matches(lambda *t: kernels.attention(*t, **kw, impl="triton"),
                    lambda *t: reference_attention(*t, **kw), q, k, v)


# Hand-written masks (True = query row may attend to key column), independent of `allowed_mask`.
# n=6, window 1, position 0 global: row 0 sees everything, column 0 is seen by every row, else |i - j| <= 1.
WINDOW1_GLOBAL1 = torch.tensor([
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [1, 0, 1, 1, 1, 0],
    [1, 0, 0, 1, 1, 1],
    [1, 0, 0, 0, 1, 1],
], dtype=torch.bool)
# The same with key 5 padding (sequence length 5): column 5 is hidden from every row.
WINDOW1_GLOBAL1_LEN5 = torch.tensor([
    [1, 1, 1, 1, 1, 0],
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [1, 0, 1, 1, 1, 0],
    [1, 0, 0, 1, 1, 0],
    [1, 0, 0, 0, 1, 0],
], dtype=torch.bool)
# n=6, window 2, causal, no global token: keys i-2 .. i.
WINDOW2_CAUSAL = torch.tensor([
    [1, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 0],
    [0, 0, 0, 1, 1, 1],
], dtype=torch.bool)
LITERAL_CASES = [(dict(window=1, num_global=1), None, WINDOW1_GLOBAL1),
                 (dict(window=1, num_global=1), 5, WINDOW1_GLOBAL1_LEN5),
                 (dict(window=2, causal=True), None, WINDOW2_CAUSAL)]


def _naive_masked(q, k, v, allowed):
    """softmax(q k^T / sqrt(d), over allowed keys) v, written out (allowed: (seq_q, seq_k) bool)."""
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5  # (batch, heads, seq_q, seq_k)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("kw,length,literal", LITERAL_CASES)
def test_allowed_mask_equals_hand_written_matrix(kw, length, literal):
    padding = None if length is None else _padding([length], 6)
    got = kernels.allowed_mask(6, 6, key_padding_mask=padding, **kw)
    assert got.shape == ((6, 6) if padding is None else (1, 1, 6, 6))
    assert torch.equal(got.reshape(6, 6), literal)


@pytest.mark.parametrize("impl", ["sdpa", "reference", pytest.param("triton", marks=needs_interpreter)])
@pytest.mark.parametrize("kw,length,literal", LITERAL_CASES)
def test_window_attention_equals_naive_softmax_with_hand_written_mask(impl, kw, length, literal):
    """Output and dq/dk/dv of each path equal the naive masked softmax with the literal matrix."""
    q, k, v = _qkv(1, 2, 6, 32, seed=7)
    padding = None if length is None else _padding([length], 6)
    _assert_matches(lambda *t: kernels.attention(*t, key_padding_mask=padding, impl=impl, **kw),
                    lambda *t: _naive_masked(*t, literal), q, k, v)


@needs_interpreter
def test_window_kernel_across_blocks_equals_mask_written_per_row():
    """n=40 (three 16-wide tiles, so tiles are skipped), window 3, 2 global tokens, length 37: the mask is
    written row by row as sets of visible keys, not by `allowed_mask`."""
    n, w, num_global, length = 40, 3, 2, 37
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        visible = set(range(length)) if i < num_global else set(range(num_global)) | set(range(i - w, i + w + 1))
        for j in visible:
            if 0 <= j < length:
                allowed[i, j] = True
    assert allowed[20].nonzero().flatten().tolist() == [0, 1, 17, 18, 19, 20, 21, 22, 23]
    assert allowed[0].sum() == 37 and allowed[39].nonzero().flatten().tolist() == [0, 1, 36]
    q, k, v = _qkv(1, 2, n, 32, seed=8)
    _assert_matches(lambda *t: kernels.attention(*t, key_padding_mask=_padding([length], n), window=w,
                                                 num_global=num_global, impl="triton"),
                    lambda *t: _naive_masked(*t, allowed), q, k, v)


@needs_interpreter
def test_non_contiguous_inputs():
    """q, k, v as the model makes them: (batch, seq, heads, d) viewed as (batch, heads, seq, d)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 19, 2, 32, generator=gen).transpose(1, 2).requires_grad_() for _ in range(3))
    mask = _padding([19, 7], 19)
    _assert_matches(lambda *t: kernels.attention(*t, key_padding_mask=mask, impl="triton"),
                    lambda *t: reference_attention(*t, key_padding_mask=mask), q, k, v)


def _pack(x, lengths):
    """(batch, heads, seq, d) padded -> (total_tokens, heads, d) packed, real tokens only."""
    return torch.cat([x[b, :, :n].transpose(0, 1) for b, n in enumerate(lengths)], dim=0)


@needs_interpreter
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, 4)])
def test_varlen_equals_padded(causal, window):
    """Packed sequences give the same outputs and gradients, token for token, as the padded batch."""
    lengths = [23, 1, 9]
    seq = max(lengths)
    q, k, v = _qkv(3, 2, seq, 32)
    mask = _padding(lengths, seq)
    out = kernels.attention(q, k, v, key_padding_mask=mask, causal=causal, window=window, impl="triton")
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    grad_out = grad_out.masked_fill(mask[:, None, :, None], 0.0)  # padded queries (absent when packed) add nothing
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    packed = [_pack(t.detach(), lengths).requires_grad_() for t in (q, k, v)]
    out_p = kernels.varlen_attention(*packed, cu, seq, causal=causal, window=window, impl="triton")
    grads_p = torch.autograd.grad(out_p, packed, _pack(grad_out, lengths))

    assert (out_p - _pack(out.detach(), lengths)).abs().max() < TOL
    assert (grads_p[0] - _pack(grads[0], lengths)).abs().max() < TOL  # dq: real queries only
    for got, want in zip(grads_p[1:], grads[1:]):  # dk, dv: real keys (padded keys have zero gradient)
        assert (got - _pack(want, lengths)).abs().max() < TOL
    for want in grads[1:]:
        assert want[1, :, 1:].abs().max() == 0


@needs_interpreter
def test_dropout_matches_reference_with_kernel_mask():
    """The kernel's dropout equals the reference given the keep-mask drawn from the same seed, and the
    backward regenerates that mask (gradients match too)."""
    p, seed = 0.3, 1234
    q, k, v = _qkv(2, 2, 21, 32)
    mask = _padding([21, 9], 21)
    keep = kernels.dropout_keep_mask(seed, 2, 2, 21, 21, p, "cpu")
    assert abs(keep.float().mean().item() - (1 - p)) < 0.05  # 1764 draws: 5 standard deviations is 0.055
    _assert_matches(lambda *t: kernels.attention(*t, key_padding_mask=mask, dropout_p=p, dropout_seed=seed,
                                                 impl="triton"),
                    lambda *t: reference_attention(*t, key_padding_mask=mask, dropout_p=p, dropout_mask=keep),
                    q, k, v)


@needs_interpreter
def test_dropout_seed_decides_mask():
    q, k, v = (t.detach() for t in _qkv(1, 1, 16, 32))
    run = lambda seed: kernels.attention(q, k, v, dropout_p=0.5, dropout_seed=seed, impl="triton")  # noqa: E731
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    assert not torch.equal(kernels.dropout_keep_mask(7, 1, 1, 16, 16, 0.5, "cpu"),
                           kernels.dropout_keep_mask(8, 1, 1, 16, 16, 0.5, "cpu"))


@needs_interpreter
def test_rows_without_visible_keys_are_zero():
    """Padded queries outside every window see no key: the kernel returns 0 there (the reference gives NaN)
    and finite gradients everywhere."""
    q, k, v = _qkv(1, 1, 30, 32)
    mask = _padding([5], 30)
    out = kernels.attention(q, k, v, key_padding_mask=mask, window=3, impl="triton")
    assert out[0, 0, 8:].abs().max() == 0  # query 8 and later: keys 5.. in the window are all padding
    ref = reference_attention(q, k, v, key_padding_mask=mask, window=3)
    assert ref[0, 0, 8:].isnan().all()
    assert (out[0, 0, :8] - ref[0, 0, :8]).abs().max() < TOL
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.sum(), (q, k, v)))


def _masks_of_every_shape(seq):
    """(batch=4, seq) masks, True = pad: right-padded, left-padded, holes across tiles, all padding."""
    mask = torch.zeros(4, seq, dtype=torch.bool)
    mask[0, 29:] = True  # right padding (the row the kernels skip by its end alone)
    mask[1, :13] = True  # left padding
    mask[2, 3:5] = True  # holes: inside the first tile, across the tile edge at 16, and trailing padding
    mask[2, 14:19] = True
    mask[2, 33:] = True
    mask[3] = True  # nothing to attend to
    return mask


def _zero_row_reference(q, k, v, key_padding_mask, **kw):
    """softmax(q k^T / sqrt(d)) v over the allowed keys, written out, with 0 (not NaN) for a query that sees no
    key: what the kernels define there, with finite gradients to compare."""
    allowed = kernels.allowed_mask(q.shape[-2], k.shape[-2], key_padding_mask=key_padding_mask, **kw)
    scores = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~allowed, -1e30)
    probs = torch.softmax(scores, dim=-1) * allowed.any(-1, keepdim=True)  # blind rows: all zero
    return probs @ v


@needs_interpreter
@pytest.mark.parametrize("kw", [{}, dict(causal=True), dict(window=6), dict(window=4, num_global=2)])
def test_any_mask_is_exact_in_the_kernels(kw):
    """Masks that are not right-padded, as impl="auto" hands them over on CUDA without looking at them
    (validate=False): outputs and dQ/dK/dV equal a written-out softmax, with 0 for queries that see no key."""
    seq = 40
    q, k, v = _qkv(4, 2, seq, 32)
    mask = _masks_of_every_shape(seq)
    sees = kernels.allowed_mask(seq, seq, key_padding_mask=mask, **kw).any(-1)  # (batch, 1, seq_q)
    assert not sees[3].any() and sees[:3].flatten(1).any(1).all()  # the all-padding row sees nothing
    _assert_matches(lambda *t: kernels.attention(*t, key_padding_mask=mask, impl="triton", validate=False, **kw),
                    lambda *t: _zero_row_reference(*t, mask, **kw), q, k, v)
    want = reference_attention(q, k, v, key_padding_mask=mask, **kw)  # the project's reference agrees where
    got = kernels.attention(q, k, v, key_padding_mask=mask, impl="triton", validate=False, **kw)
    assert (got - want).abs()[sees.expand_as(got[..., 0])].max() < TOL  # a query sees a key


@needs_interpreter
@pytest.mark.parametrize("kw", [dict(key_padding_mask=_padding([13], 20), window=4,
                                     num_global=1, scale=0.2),
                                dict(causal=True, dropout_p=0.25, dropout_seed=11)])
def test_gradcheck_float64(kw):
    """torch.autograd.gradcheck of the hand-written backward (fp64 through the interpreter)."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 1, 20, 32, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(3))
    assert torch.autograd.gradcheck(lambda *t: kernels.attention(*t, **kw, impl="triton"), (q, k, v),
                                    fast_mode=True, atol=1e-6, rtol=1e-4)


@needs_interpreter
def test_gradcheck_float64_varlen():
    cu = torch.tensor([0, 7, 8, 25], dtype=torch.int32)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(25, 2, 32, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(3))
    assert torch.autograd.gradcheck(lambda *t: kernels.varlen_attention(*t, cu, 17, causal=True, impl="triton"),
                                    (q, k, v), fast_mode=True, atol=1e-6, rtol=1e-4)


# ---- dispatch (no triton needed) ------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(window=3), dict(window=3, num_global=2)])
def test_sdpa_path_matches_reference(kw):
    q, k, v = _qkv(2, 3, 13, 16)
    mask = _padding([13, 10], 13)  # every query keeps a visible key, also in a window of 3
    got = kernels.attention(q, k, v, key_padding_mask=mask, impl="sdpa", **kw)
    want = reference_attention(q, k, v, key_padding_mask=mask, **kw)
    assert (got - want).abs().max() < 1e-5


def test_auto_on_cpu_is_sdpa():
    q, k, v = _qkv(1, 2, 9, 16)
    mask = _padding([6], 9)
    assert torch.equal(kernels.attention(q, k, v, mask), kernels.attention(q, k, v, mask, impl="sdpa"))


def test_reference_varlen_loops_sequences():
    lengths = [5, 2]
    q, k, v = (t.detach() for t in _qkv(2, 2, 5, 16))
    mask = _padding(lengths, 5)
    cu = torch.tensor([0, 5, 7], dtype=torch.int32)
    packed = [_pack(t, lengths) for t in (q, k, v)]
    got = kernels.varlen_attention(*packed, cu, 5, impl="reference")
    want = _pack(reference_attention(q, k, v, key_padding_mask=mask), lengths)
    assert (got - want).abs().max() < 1e-5


# ---- bad input -----------------------------------------------------------------------------------


def _bad(**over):
    q, k, v = (t.detach() for t in _qkv(2, 2, 8, 32))
    args = dict(q=q, k=k, v=v)
    args.update(over)
    return args


@pytest.mark.parametrize("over,words", [
    (dict(q=torch.randn(2, 8, 32)), "4 dims"),
    (dict(k=torch.randn(2, 2, 8, 16)), "head_dim"),
    (dict(v=torch.randn(2, 2, 8, 32, dtype=torch.float64)), "dtypes differ"),
    (dict(q=torch.ones(2, 2, 8, 32, dtype=torch.long)), "floating"),
    (dict(k=torch.randn(3, 2, 8, 32)), "do not agree"),
    (dict(key_padding_mask=torch.zeros(2, 7, dtype=torch.bool)), "key_padding_mask has shape"),
    (dict(key_padding_mask=torch.zeros(2, 8)), "bool tensor"),
    (dict(window=-1), "window"),
    (dict(num_global=2), "num_global needs a sliding window"),
    (dict(dropout_p=1.0), "dropout_p"),
    (dict(impl="cuda"), "unknown attention impl"),
])
def test_bad_input_is_config_error(over, words):
    with pytest.raises(ConfigError, match=words):
        kernels.attention(**_bad(**over))


@needs_interpreter
@pytest.mark.parametrize("over,words", [
    (dict(q=torch.randn(2, 2, 8, 48), k=torch.randn(2, 2, 8, 48), v=torch.randn(2, 2, 8, 48)), "head_dim"),
    (dict(q=torch.randn(2, 2, 8, 32).to(torch.float8_e4m3fn), k=torch.randn(2, 2, 8, 32).to(torch.float8_e4m3fn),
          v=torch.randn(2, 2, 8, 32).to(torch.float8_e4m3fn)), "supports"),
    (dict(key_padding_mask=torch.tensor([[True] + [False] * 7, [False] * 8])), "right-padded"),
])
def test_bad_input_for_triton_is_config_error(over, words):
    with pytest.raises(ConfigError, match=words):
        kernels.attention(**_bad(**over), impl="triton")


@pytest.mark.parametrize("cu,max_seqlen,words", [
    (torch.tensor([0, 5, 9]), 5, "total_tokens"),
    (torch.tensor([0, 5, 10]), 4, "max_seqlen"),
    (torch.tensor([[0, 10]]), 10, "1-D int32"),
])
def test_bad_varlen_input_is_config_error(cu, max_seqlen, words):
    q = torch.randn(10, 2, 32)
    with pytest.raises(ConfigError, match=words):
        kernels.varlen_attention(q, q, q, cu, max_seqlen)
