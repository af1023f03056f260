"""Attention kinds: registry, shared behaviour (shape, padding, gradients, dtype, checkpoints) and
the exact equalities each efficient kind has with full attention in a limiting configuration."""
from __future__ import annotations

import importlib.util
import inspect
import math
import os

import torch

if not torch.cuda.is_available():  # the Triton kernels then run in the interpreter (set before they load)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from nanoft.attention import (BigBird, BigBirdAttention, Full, FullAttention, Linformer,  # noqa: E402
                              Longformer, LongformerAttention, Performer, PerformerAttention, available, build,
                              options_of)
from nanoft.errors import ConfigError  # noqa: E402

HEADS, DIM, MAXLEN = 2, 16, 64

# Small settings per kind so that every kind is really sparse/low-rank at seq = 40.
SMALL = {
    "full": {},
    "linformer": {"k": 8, "init": "random"},
    "performer": {"num_features": 32, "seed": 0},
    "longformer": {"window": 3, "global_positions": (0,)},
    "bigbird": {"block_size": 8, "num_random_blocks": 1, "seed": 0},
}


def dense_attention(q, k, v, allowed=None, scale=None):
    """softmax(q k^T * scale) v with an explicit (…, seq_q, seq_k) mask, True = allowed."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def padding_mask(lengths, seq):
    return torch.arange(seq)[None, :] >= torch.tensor(lengths)[:, None]  # (batch, seq), True = padding


def qkv(batch=2, seq=40, dim=DIM, heads=HEADS, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, heads, seq, dim, generator=g) * scale).to(dtype) for _ in range(3)]


# --- registry -----------------------------------------------------------------------------------

def test_registry_lists_all_kinds_and_aliases():
    assert available() == ["full", "linformer", "performer", "longformer", "bigbird"]
    aliases = (Full, Linformer, Performer, Longformer, BigBird)
    assert aliases == (FullAttention, Linformer, PerformerAttention, LongformerAttention, BigBirdAttention)
    assert all(cls.__name__.lower().startswith(kind) for cls, kind in zip(aliases, available()))
    for kind in available():
        module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, dropout=0.1)
        assert module.dropout == 0.1 and hasattr(module, "reset_parameters")


@pytest.mark.parametrize("kind", ["full", "linformer", "performer", "longformer", "bigbird"])
def test_options_of_matches_constructor_keywords(kind):
    cls = {"full": FullAttention, "linformer": Linformer, "performer": Performer,
           "longformer": LongformerAttention, "bigbird": BigBirdAttention}[kind]
    params = inspect.signature(cls.__init__).parameters.values()
    keyword_only = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert options_of(kind) == keyword_only


def test_unknown_kind_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown attention kind 'perfomer'.*did you mean 'performer'.*bigbird"):
        build("perfomer", num_heads=2, head_dim=8, max_length=16)


def test_unknown_option_suggests_nearest():
    with pytest.raises(ConfigError, match=r"'num_feature'.*did you mean 'num_features'.*redraw_interval"):
        build("performer", num_heads=2, head_dim=8, max_length=16, num_feature=8)
    with pytest.raises(ConfigError, match=r"unknown full attention option 'window'.*valid: \(none\)"):
        build("full", num_heads=2, head_dim=8, max_length=16, window=4)


@pytest.mark.parametrize("kind, options", [
    ("linformer", {"k": 0}), ("performer", {"kernel": "tanh"}), ("performer", {"num_features": -1}),
    ("longformer", {"window": -2}), ("bigbird", {"num_window_blocks": 2}), ("bigbird", {"block_size": 0}),
])
def test_bad_option_values_are_config_errors(kind, options):
    with pytest.raises(ConfigError, match=kind):
        build(kind, num_heads=2, head_dim=8, max_length=16, **options)


def test_names_choices_and_option_help_come_from_the_registry():
    from nanoft.attention import choices, names, option_help

    assert names() == available() == list(choices())
    assert choices()["longformer"].startswith("Sliding-window attention")
    for kind in names():  # every option has a help line for `nanoft train --help`
        assert set(option_help(kind)) == set(options_of(kind)) and all(option_help(kind).values()), kind


def test_options_object_and_keywords_build_the_same_module():
    from nanoft.attention import PerformerOptions

    by_name = build("performer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, num_features=12, seed=4)
    by_object = Performer(HEADS, DIM, MAXLEN, options=PerformerOptions(num_features=12, seed=4))
    overridden = Performer(HEADS, DIM, MAXLEN, options=PerformerOptions(num_features=12, seed=5), seed=4)
    assert by_name.options == by_object.options == overridden.options
    assert torch.equal(by_name.features, by_object.features) and torch.equal(by_name.features, overridden.features)
    with pytest.raises(ConfigError, match="performer attention takes PerformerOptions, got LongformerOptions"):
        Performer(HEADS, DIM, MAXLEN, options=Longformer.Options())
    with pytest.raises(ConfigError, match="performer attention.*did you mean 'kernel'"):
        Performer(HEADS, DIM, MAXLEN, kernal="relu")


@pytest.mark.parametrize("kind", ["full", "bigbird"])
def test_bad_dropout_or_scale_is_config_error_at_build(kind):
    with pytest.raises(ConfigError, match=rf"{kind} attention: dropout must be in \[0, 1\)"):
        build(kind, num_heads=2, head_dim=8, max_length=16, dropout=1.0)
    with pytest.raises(ConfigError, match=rf"{kind} attention: scale must be positive"):
        build(kind, num_heads=2, head_dim=8, max_length=16, scale=0.0)


@pytest.mark.parametrize("kind", available())
def test_wrong_input_shapes_name_the_expected_layout(kind):
    module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **SMALL[kind])
    q, k, v = qkv(heads=HEADS + 1)
    with pytest.raises(ConfigError, match=rf"built for {HEADS} heads"):
        module(q, k, v)
    q, k, v = qkv()
    with pytest.raises(ConfigError, match="key_padding_mask must be a bool tensor"):
        module(q, k, v, torch.ones(2, 40))


@pytest.mark.parametrize("kind", ["linformer", "bigbird"])
def test_sequence_longer_than_max_length_is_config_error(kind):
    module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **SMALL[kind])
    q, k, v = qkv(batch=1, seq=MAXLEN + 1)
    with pytest.raises(ConfigError, match="max_length"):
        module(q, k, v)


# --- behaviour shared by all kinds ----------------------------------------------------------------

@pytest.mark.parametrize("kind", available())
def test_shape_and_padding_invariance(kind):
    """Changing padded keys/values must not change any output of a non-padded query."""
    torch.manual_seed(0)
    module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **SMALL[kind]).eval()
    q, k, v = qkv()
    mask = padding_mask([40, 27], 40)
    out = module(q, k, v, mask)
    assert out.shape == q.shape and torch.isfinite(out).all()
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 27:] = 100.0 * torch.randn_like(k2[1, :, 27:])
    v2[1, :, 27:] = 100.0 * torch.randn_like(v2[1, :, 27:])
    out2 = module(q, k2, v2, mask)
    real = ~mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out2[real], out[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(module(q, k2, v2), out)  # without the mask the change is visible


@pytest.mark.parametrize("kind", available())
def test_gradients_reach_inputs_and_parameters(kind):
    module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **SMALL[kind])
    q, k, v = (t.requires_grad_() for t in qkv())
    module(q, k, v, padding_mask([40, 30], 40)).square().sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", available())
def test_bf16_runs_and_tracks_fp32(kind):
    torch.manual_seed(0)
    module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **SMALL[kind]).eval()
    q, k, v = qkv(scale=0.5)
    mask = padding_mask([40, 31], 40)
    ref = module(q, k, v, mask)
    out = module.to(torch.bfloat16)(*(t.bfloat16() for t in (q, k, v)), mask)
    assert out.dtype == torch.bfloat16
    real = ~mask[:, None, :, None].expand_as(ref)
    torch.testing.assert_close(out.float()[real], ref[real], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("kind", available())
def test_state_dict_reproduces_outputs(kind):
    """New parameters and random layouts/features live in the state dict, so a reload is exact."""
    options = {key: value for key, value in SMALL[kind].items() if key != "seed"}  # global RNG draws
    torch.manual_seed(1)
    saved = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **options).eval()
    torch.manual_seed(2)
    loaded = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **options).eval()
    q, k, v = qkv()
    if kind in ("linformer", "performer", "bigbird"):
        assert not torch.equal(saved(q, k, v), loaded(q, k, v))
    loaded.load_state_dict(saved.state_dict())
    assert torch.equal(saved(q, k, v), loaded(q, k, v))


@pytest.mark.parametrize("kind", available())
def test_dropout_only_in_training(kind):
    torch.manual_seed(0)
    module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, dropout=0.5, **SMALL[kind])
    q, k, v = qkv()
    module.eval()
    assert torch.equal(module(q, k, v), module(q, k, v))
    module.train()
    assert not torch.allclose(module(q, k, v), module(q, k, v))


# --- exact equalities with full attention ---------------------------------------------------------

def test_full_matches_dense_reference_with_padding():
    q, k, v = qkv()
    mask = padding_mask([40, 23], 40)
    out = build("full", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN)(q, k, v, mask)
    ref = dense_attention(q, k, v, ~mask[:, None, None, :])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_linformer_with_identity_projections_is_full_attention():
    seq = 24
    module = build("linformer", num_heads=HEADS, head_dim=DIM, max_length=seq, k=seq)
    with torch.no_grad():
        module.proj_k.copy_(torch.eye(seq))
        module.proj_v.copy_(torch.eye(seq))
    q, k, v = qkv(seq=seq)
    torch.testing.assert_close(module(q, k, v), dense_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_linformer_projects_padding_out_and_uses_first_columns():
    """Short inputs use the first n columns; padded rows are zeroed, not averaged in."""
    module = build("linformer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, k=8, headwise=True, init="random")
    assert module.proj_k.shape == (HEADS, 8, MAXLEN) and module.proj_v.shape == (HEADS, 8, MAXLEN)
    q, k, v = qkv(batch=1, seq=20)
    mask = padding_mask([13], 20)
    out = module(q, k, v, mask)
    # The same keys without their padding (a 13-token input, first 13 columns) give the same output.
    torch.testing.assert_close(module(q, k[:, :, :13], v[:, :, :13]), out, atol=1e-5, rtol=1e-5)
    e, f = module.proj_k[:, :, :13], module.proj_v[:, :, :13]
    k_low, v_low = e @ k[:, :, :13], f @ v[:, :, :13]
    ref = dense_attention(q, k_low, v_low)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    shared = build("linformer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, k=8, share_kv=True)
    assert shared.proj_v is None and shared.proj_k.shape == (1, 8, MAXLEN)


def test_linformer_pooling_init_attends_to_segment_means_of_real_keys():
    """The default init: row j averages segment j (here 8 positions); segments beyond a short input or
    holding only padding are no key at all, so identity projections give full attention at any length."""
    module = build("linformer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, k=8)
    q, k, v = qkv(batch=2, seq=20)
    mask = padding_mask([20, 7], 20)
    out = module(q, k, v, mask)
    for b, n in enumerate((20, 7)):
        segments = [range(s, min(s + 8, 20)) for s in range(0, 20, 8) if s < n]  # 3 segments, then 1
        k_low = torch.stack([k[b, :, list(seg)][:, :, :].masked_fill(~(torch.tensor(list(seg)) < n)[None, :, None], 0)
                             .sum(1) / 8 for seg in segments], dim=1)  # (heads, segments, dim)
        v_low = torch.stack([v[b, :, list(seg)].masked_fill(~(torch.tensor(list(seg)) < n)[None, :, None], 0)
                             .sum(1) / 8 for seg in segments], dim=1)
        ref = dense_attention(q[b:b + 1], k_low[None], v_low[None])
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=1e-5)
    identity = build("linformer", num_heads=HEADS, head_dim=DIM, max_length=24, k=32)  # k > length: identity
    q, k, v = qkv(seq=20)
    torch.testing.assert_close(identity(q, k, v), dense_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_linformer_adaptive_projection_pools_each_sequence_by_its_own_length():
    """projection=adaptive: no parameters; a sequence of L <= k real tokens gets exact attention over its real
    keys, a longer one attends to the means of the k segments {i : i * k // L == j} (hand-built here), for
    every row of a padded batch by its own length."""
    module = build("linformer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, k=8, projection="adaptive")
    assert not list(module.parameters())
    q, k, v = qkv(batch=3, seq=20)
    lengths = (20, 13, 6)
    out = module(q, k, v, padding_mask(list(lengths), 20))
    for b, n in enumerate(lengths):
        if n <= 8:
            ref = dense_attention(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n])
            torch.testing.assert_close(out[b:b + 1, :, :n], ref, atol=1e-5, rtol=1e-5)
            continue
        segments = [[i for i in range(n) if i * 8 // n == j] for j in range(8)]
        assert all(segments) and sum(map(len, segments)) == n
        k_low = torch.stack([k[b, :, seg].mean(1) for seg in segments], dim=1)[None]  # (1, heads, 8, dim)
        v_low = torch.stack([v[b, :, seg].mean(1) for seg in segments], dim=1)[None]
        torch.testing.assert_close(out[b:b + 1], dense_attention(q[b:b + 1], k_low, v_low), atol=1e-5, rtol=1e-5)
    # left padding: row 1's 13 real tokens moved to the end pool into the same segments, same outputs
    rolled = [torch.roll(t[1:2], shifts=7, dims=2) for t in (q, k, v)]  # real tokens at positions 7..19
    left_mask = torch.arange(20)[None, :] < 7  # (1, 20): padding first
    out_left = module(*rolled, left_mask)
    torch.testing.assert_close(out_left[:, :, 7:], out[1:2, :, :13], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="unknown projection 'fixed'"):
        build("linformer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, k=8, projection="fixed")


@pytest.mark.parametrize("window", [39, 100])
def test_longformer_window_covering_sequence_is_full_attention(window):
    q, k, v = qkv()
    module = build("longformer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, window=window)
    torch.testing.assert_close(module(q, k, v), dense_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("always_sparse", [False, True], ids=["auto", "sparse"])
@pytest.mark.parametrize("window, positions", [(3, (0,)), (1, (0, 17, 39)), (5, ()), (0, (2,)), (40, (0, 99))])
def test_longformer_matches_dense_banded_mask(window, positions, always_sparse):
    """The chunked computation (and the dense form short inputs take) equals a dense softmax under the
    Longformer mask, with padding."""
    q, k, v = qkv()
    mask = padding_mask([40, 29], 40)
    module = build("longformer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, window=window,
                   global_positions=positions)
    module.always_sparse = always_sparse
    i, j = torch.arange(40)[:, None], torch.arange(40)[None, :]
    glob = torch.zeros(40, dtype=torch.bool)
    glob[[p for p in positions if p < 40]] = True
    allowed = ((i - j).abs() <= window) | glob[:, None] | glob[None, :]
    allowed = allowed[None, None] & ~mask[:, None, None, :]
    ref = dense_attention(q, k, v, allowed)
    real = ~mask[:, None, :, None].expand_as(ref)
    torch.testing.assert_close(module(q, k, v, mask)[real], ref[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("always_sparse", [False, True], ids=["auto", "sparse"])
@pytest.mark.parametrize("kind, options", [("longformer", {"window": 2, "global_positions": ()}),
                                           ("bigbird", {"block_size": 4, "num_global_blocks": 0,
                                                        "num_random_blocks": 0, "seed": 0})])
def test_query_with_only_padded_keys_stays_finite(kind, options, always_sparse):
    """Padded queries far from any real key have nothing to attend to: no NaN, in outputs or grads."""
    module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **options)
    module.always_sparse = always_sparse
    q, k, v = (t.requires_grad_() for t in qkv())
    mask = padding_mask([40, 12], 40)
    out = module(q, k, v, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_bigbird_all_global_is_full_attention():
    q, k, v = qkv(seq=37)  # not a multiple of the block size
    mask = padding_mask([37, 30], 37)
    module = build("bigbird", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, block_size=8, num_global_blocks=5)
    ref = dense_attention(q, k, v, ~mask[:, None, None, :])
    torch.testing.assert_close(module(q, k, v, mask), ref, atol=1e-5, rtol=1e-5)


def bigbird_dense_mask(module, seq):
    """(heads, seq, seq) bool mask from the module's layout, built position by position."""
    bs, g = module.options.block_size, module.options.num_global_blocks
    blocks = -(-seq // bs)
    idx, ok = module.layout(blocks)
    allowed = torch.zeros(module.num_heads, blocks, blocks, dtype=torch.bool)
    allowed[:, :g, :] = True
    for h in range(module.num_heads):
        for row in range(idx.shape[1]):
            for col, good in zip(idx[h, row].tolist(), ok[h, row].tolist()):
                allowed[h, g + row, col] |= good
    return allowed.repeat_interleave(bs, 1).repeat_interleave(bs, 2)[:, :seq, :seq]


@pytest.mark.parametrize("always_sparse", [False, True], ids=["auto", "sparse"])
@pytest.mark.parametrize("seq, window_blocks, random_blocks", [(40, 3, 1), (61, 3, 2), (64, 5, 3), (9, 3, 3)])
def test_bigbird_matches_dense_block_mask_and_has_no_duplicates(seq, window_blocks, random_blocks, always_sparse):
    module = build("bigbird", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, block_size=8,
                   num_window_blocks=window_blocks, num_random_blocks=random_blocks, seed=3)
    module.always_sparse = always_sparse
    blocks = -(-seq // 8)
    idx, ok = module.layout(blocks)
    half = window_blocks // 2
    for h in range(HEADS):
        for row in range(idx.shape[1]):
            picked = idx[h, row][ok[h, row]].tolist()
            assert len(picked) == len(set(picked)), "a key block is counted twice"
            block = 1 + row  # one global block in front
            window = [b for b in range(block - half, block + half + 1) if 1 <= b < blocks]
            assert picked[: 1 + len(window)] == [0] + window
            assert len(picked) == 1 + len(window) + min(random_blocks, blocks - 1 - len(window))
    q, k, v = qkv(seq=seq)
    mask = padding_mask([seq, seq - 7], seq)
    allowed = bigbird_dense_mask(module, seq)[None] & ~mask[:, None, None, :]
    ref = dense_attention(q, k, v, allowed)
    real = ~mask[:, None, :, None].expand_as(ref)
    torch.testing.assert_close(module(q, k, v, mask)[real], ref[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind, options, short, long", [
    ("longformer", {"window": 16}, 30, 200),
    ("bigbird", {"block_size": 8, "num_random_blocks": 1, "seed": 0}, 24, 60)])
def test_short_inputs_take_the_dense_form_and_long_ones_the_sparse_form(kind, options, short, long, monkeypatch):
    """The dense form is chosen only where its n x n scores are no larger than the sparse gather."""
    module = build(kind, num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, **options)
    calls = []
    original = module._dense
    monkeypatch.setattr(module, "_dense", lambda *a: calls.append(a[0].shape[2]) or original(*a))
    for n in (short, long):
        module(*qkv(seq=n))
    assert calls == [short]


def test_bigbird_random_layout_is_seeded_and_differs_per_head():
    make = lambda seed: build("bigbird", num_heads=4, head_dim=8, max_length=512, block_size=16, seed=seed)
    a, b, c = make(5), make(5), make(6)
    assert torch.equal(a.random_priority, b.random_priority)
    assert not torch.equal(a.random_priority, c.random_priority)
    idx, _ = a.layout(32)
    assert not all(torch.equal(idx[0], idx[h]) for h in range(1, 4))
    assert "random_priority" in a.state_dict()


# --- performer ------------------------------------------------------------------------------------

def test_performer_error_falls_as_features_grow():
    q, k, v = qkv(batch=1, seq=64, scale=0.5)
    ref = dense_attention(q, k, v)
    errors = []
    for m in (64, 256, 1024):
        per_seed = [(build("performer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, num_features=m,
                           seed=s)(q, k, v) - ref).abs().mean() for s in range(4)]
        errors.append(torch.stack(per_seed).mean().item())
    assert errors[0] > 1.3 * errors[1] > 1.3 * 1.3 * errors[2], errors
    assert errors[2] < 0.01, errors


def test_performer_attention_weights_are_unbiased():
    """phi(q) . phi(k), normalised per query, converges to softmax(q k^T * scale) like 1/sqrt(m).

    A biased feature map (e.g. directions from QR without the sign fix, which are not uniform)
    stalls at its bias instead of shrinking 8x when m grows 64x.
    """
    q, k, _ = qkv(batch=1, seq=32, heads=1, scale=0.5, dtype=torch.float64)
    ref = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(DIM), dim=-1)
    valid = torch.ones(1, 32, dtype=torch.bool)
    errors = []
    for m in (1024, 65536):
        per_seed = []
        for seed in range(3):
            module = build("performer", num_heads=1, head_dim=DIM, max_length=MAXLEN, num_features=m, seed=seed)
            module = module.double()
            weights = module.feature_map(q, True, None) @ module.feature_map(k, False, valid).transpose(-2, -1)
            weights = weights / weights.sum(dim=-1, keepdim=True)
            per_seed.append(((weights - ref).abs() / ref).mean())
        errors.append(torch.stack(per_seed).mean().item())
    assert errors[1] < 0.25 * errors[0], errors


def test_performer_features_are_orthogonal_blocks_and_seeded():
    module = build("performer", num_heads=HEADS, head_dim=8, max_length=MAXLEN, num_features=20, seed=7)
    w = module.features  # (20, 8): blocks of 8, 8, 4 orthogonal rows
    for block in (w[:8], w[8:16], w[16:]):
        gram = block @ block.T
        torch.testing.assert_close(gram - torch.diag(torch.diagonal(gram)), torch.zeros_like(gram), atol=1e-4, rtol=0)
    again = build("performer", num_heads=HEADS, head_dim=8, max_length=MAXLEN, num_features=20, seed=7)
    assert torch.equal(w, again.features)
    assert "features" in module.state_dict()


def test_performer_redraws_every_interval_in_training_only():
    module = build("performer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, num_features=16,
                   redraw_interval=2, seed=0)
    q, k, v = qkv(batch=1, seq=8)
    first = module.features.clone()
    module.eval()
    for _ in range(3):
        module(q, k, v)
    assert torch.equal(module.features, first)
    module.train()
    module(q, k, v)
    module(q, k, v)
    assert torch.equal(module.features, first)
    module(q, k, v)  # third training call: redraw
    second = module.features.clone()
    assert not torch.equal(second, first)
    module(q, k, v)
    assert torch.equal(module.features, second)
    module.eval()
    torch.testing.assert_close(module(q, k, v), module(q, k, v))


def test_performer_relu_kernel_is_a_normalised_average():
    """With the relu kernel every output is a convex combination of values: inside their range."""
    module = build("performer", num_heads=HEADS, head_dim=DIM, max_length=MAXLEN, kernel="relu", seed=0)
    q, k, v = qkv(batch=1, seq=30)
    out = module(q, k, v)
    assert (out <= v.amax(dim=2, keepdim=True) + 1e-5).all() and (out >= v.amin(dim=2, keepdim=True) - 1e-5).all()


# --- gradcheck on the custom math -----------------------------------------------------------------

@pytest.mark.parametrize("kind, options", [
    ("linformer", {"k": 3}),
    ("performer", {"num_features": 6, "seed": 0}),
    ("performer", {"num_features": 6, "seed": 0, "kernel": "relu"}),
    ("longformer", {"window": 1, "global_positions": (0, 4)}),
    ("bigbird", {"block_size": 2, "num_random_blocks": 1, "seed": 0}),
])
def test_gradcheck_double(kind, options):
    module = build(kind, num_heads=1, head_dim=4, max_length=8, **options).double()
    q, k, v = (t.double().requires_grad_() for t in qkv(batch=2, seq=7, dim=4, heads=1, scale=0.5))
    mask = padding_mask([7, 5], 7)
    assert torch.autograd.gradcheck(lambda q, k, v: module(q, k, v, mask), (q, k, v), atol=1e-6, rtol=1e-4)
    inputs = (q.detach(), k.detach(), v.detach(), mask)
    for name, p in module.named_parameters():  # Linformer's projections
        check = lambda weight: torch.func.functional_call(module, {name: weight}, inputs)
        assert torch.autograd.gradcheck(check, (p.detach().clone().requires_grad_(),), atol=1e-6, rtol=1e-4)


# --- CUDA (run on a GPU machine; skipped elsewhere) -------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("kind", available())
def test_cuda_bf16_forward_backward_tracks_cpu_fp32(kind):
    torch.manual_seed(0)
    module = build(kind, num_heads=HEADS, head_dim=64, max_length=256, **SMALL[kind]).eval()
    q, k, v = (t.requires_grad_() for t in qkv(seq=200, dim=64, scale=0.5))
    mask = padding_mask([200, 150], 200)
    keep = (~mask)[:, None, :, None].float()  # loss over real queries only: padded rows are unspecified
    ref = module(q, k, v, mask)
    (ref * keep).square().sum().backward()
    gpu = [t.detach().cuda().bfloat16().requires_grad_() for t in (q, k, v)]
    out = module.cuda().bfloat16()(*gpu, mask.cuda())
    (out.float() * keep.cuda()).square().sum().backward()
    real = keep.bool().expand_as(q)
    torch.testing.assert_close(out.float().cpu()[real], ref.detach()[real], atol=3e-2, rtol=3e-2)
    for cpu_t, gpu_t in zip((q, k, v), gpu):
        torch.testing.assert_close(gpu_t.grad.float().cpu()[real], cpu_t.grad[real], atol=1e-1, rtol=5e-2)


@needs_cuda
def test_longformer_fused_triton_path_matches_chunked_path():
    pytest.importorskip("triton")
    module = build("longformer", num_heads=HEADS, head_dim=64, max_length=512, window=32, global_positions=(0, 1))
    q, k, v = qkv(seq=300, dim=64, scale=0.5)
    mask = padding_mask([300, 211], 300).cuda()
    keep = (~mask)[:, None, :, None].float()
    gpu = [t.cuda().bfloat16().requires_grad_() for t in (q, k, v)]
    assert module._fused_ok(gpu[0], mask)
    fused = module(*gpu, mask)
    (fused.float() * keep).sum().backward()
    chunked_in = [t.detach().float().requires_grad_() for t in gpu]  # fp32 takes the chunked torch path
    chunked = module(*chunked_in, mask)
    (chunked * keep).sum().backward()
    real = keep.bool().expand_as(chunked)
    torch.testing.assert_close(fused.float()[real], chunked[real], atol=2e-2, rtol=2e-2)
    for a, b in zip(gpu, chunked_in):
        torch.testing.assert_close(a.grad.float()[real], b.grad[real], atol=5e-2, rtol=5e-2)


def _triton_interpreter() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    from nanoft.kernels import flash
    return flash.INTERPRET


@pytest.mark.skipif(torch.cuda.is_available() or not _triton_interpreter(),
                    reason="needs triton in interpreter mode (TRITON_INTERPRET=1, no CUDA)")
def test_longformer_fused_kernel_call_matches_chunked_path_in_interpreter():
    """The call the CUDA fast path makes (window + prefix globals) computes what the chunked path does."""
    module = build("longformer", num_heads=1, head_dim=32, max_length=64, window=5, global_positions=(0, 1))
    q, k, v = qkv(seq=40, dim=32, heads=1)
    mask = padding_mask([40, 29], 40)
    fused = module._fused(q, k, v, mask, 5, 2)
    real = ~mask[:, None, :, None].expand_as(q)
    torch.testing.assert_close(fused[real], module(q, k, v, mask)[real], atol=1e-4, rtol=1e-4)
