"""The unpadded encoder (`unpad=True`) computes what the padded one computes: hidden states, every head's
logits and every parameter's gradient to 1e-5 (fp32), for BERT, RoBERTa and DistilBERT, with LoRA and
gradient checkpointing, on batches mixing lengths 1..max; training with and without it ends with the
same weights. And neither path reads a tensor back to the host during a forward or backward."""
from __future__ import annotations

import copy
import random
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import nanoft
from nanoft import kernels, peft
from nanoft.errors import ConfigError
from nanoft.models import encoder as encoder_module

FAMILIES = ("bert", "roberta", "distilbert")
HEADS = (None, "classification", "regression", "token-classification", "masked-lm")
TOL = dict(atol=1e-5, rtol=1e-5)
LENGTHS = [9, 1, 4, 12, 2, 12, 7]  # 1..max, two rows at max, one bare [CLS]


def mixed_batch(family):
    """(ids, mask, token types or None) with the family's pad id, right-padded to max(LENGTHS)."""
    pad = 1 if family == "roberta" else 0
    g = torch.Generator().manual_seed(3)
    T = max(LENGTHS)
    ids = torch.full((len(LENGTHS), T), pad, dtype=torch.long)
    mask = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        row = torch.randint(3, 120, (n,), generator=g)
        ids[i, :n], mask[i, :n] = row, 1
    types = None
    if family == "bert":
        types = torch.zeros_like(ids)
        types[:, 5:] = 1
        types = types * mask
    return ids, mask, types


def twins(model):
    """(padded, unpadded) copies of `model` with the same weights."""
    padded, unpadded = copy.deepcopy(model), copy.deepcopy(model)
    padded.config.unpad, unpadded.config.unpad = False, True
    return padded, unpadded


@contextmanager
def packed_layer_inputs(model):
    """Records the number of dims of every encoder layer's input: 2 = packed (total_tokens, hidden)."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].dim()))
             for layer in model.encoder.layers]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def load(tiny_checkpoints, family, head):
    checkpoint = tiny_checkpoints[(family, "classification" if head == "regression" else head or "base")]
    model = nanoft.load_model(checkpoint, head=head, num_labels=1 if head == "regression" else 3)
    torch.manual_seed(0)
    with torch.no_grad():  # a fresh regression head is random; make every head's weights far from zero
        for p in model.head.parameters() if model.head is not None else ():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def masked_positions_of(mask, every=3):
    """Flat (batch * seq) positions of every `every`-th real token: what the masked-LM objective passes."""
    real = torch.nonzero(mask.reshape(-1)).squeeze(1)
    return real[::every]


def loss_of(out, head, mask, positions):
    """A loss over what both paths define: real positions only for per-token outputs."""
    w = torch.linspace(-1, 1, out.shape[-1]) if out.dim() > 1 else None
    if head in (None, "token-classification") or (head == "masked-lm" and positions is None):
        return ((out * w).sum(-1) * mask).sum()  # (batch, seq) weighted, padding excluded
    if head == "masked-lm":
        return F.cross_entropy(out, torch.arange(out.shape[0]) % out.shape[-1])
    if head == "regression":
        return ((out - 0.5) ** 2).sum()
    return F.cross_entropy(out, torch.tensor([0, 1, 2, 0, 1, 2, 0]))


def compare(padded, unpadded, family, head, positions=None, train=False):
    """Outputs at the positions both define, zeros at padding (unpadded), and every gradient."""
    ids, mask, types = mixed_batch(family)
    kwargs = {"masked_positions": positions} if positions is not None else {}
    outs = []
    for model in (padded, unpadded):
        model.train(train)
        model.zero_grad(set_to_none=True)
        with packed_layer_inputs(model) as dims:
            out = model(ids, attention_mask=mask, token_type_ids=types, **kwargs)
        assert set(dims) == ({2} if model is unpadded else {3})  # the twin really ran packed
        loss_of(out, head, mask, positions).backward()
        outs.append(out)
    want, got = outs
    if want.dim() == 3:  # per-token outputs: real positions agree, padding is zero when unpadded
        real = mask.bool()
        assert_close(got[real], want[real], **TOL)
        assert got[~real].abs().max() == 0
    else:
        assert_close(got, want, **TOL)
    grads = {n: p.grad for n, p in padded.named_parameters() if p.requires_grad}
    checked = 0
    for name, p in unpadded.named_parameters():
        if not p.requires_grad:
            continue
        if grads[name] is None:
            assert p.grad is None or p.grad.abs().max() == 0, name
            continue
        assert_close(p.grad, grads[name], **TOL, msg=lambda m: f"{name}: {m}")
        checked += 1
    return checked


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", HEADS)
def test_unpadded_equals_padded(family, head, tiny_checkpoints):
    padded, unpadded = twins(load(tiny_checkpoints, family, head))
    checked = compare(padded, unpadded, family, head)
    assert checked == sum(1 for p in padded.parameters() if p.requires_grad)  # no gradient left out


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_lm_positions(family, tiny_checkpoints):
    """The masked-LM objective's flat positions pick the same rows out of the packed tokens."""
    padded, unpadded = twins(load(tiny_checkpoints, family, "masked-lm"))
    positions = masked_positions_of(mixed_batch(family)[1])
    assert compare(padded, unpadded, family, "masked-lm", positions=positions) > 0


PEFT = {"lora": dict(r=4, alpha=8, targets=["query", "value", "intermediate"]), "houlsby": {}, "ia3": {}}


@pytest.mark.parametrize("family,head,method", [
    *((family, head, "lora") for family in FAMILIES for head in ("classification", "token-classification")),
    ("bert", "classification", "houlsby"), ("roberta", "token-classification", "ia3")])
def test_unpadded_equals_padded_with_peft(family, head, method, tiny_checkpoints):
    """LoRA, bottleneck adapters and IA3 on the packed tokens: same outputs and adapter/head gradients."""
    model = load(tiny_checkpoints, family, head)
    peft.apply(model, method, **PEFT[method])
    adapter = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]
    assert adapter  # the base is frozen: what trains besides the head is the adapter
    torch.manual_seed(1)
    with torch.no_grad():  # adapters start as the identity (LoRA's B, the up-projections are zero): move them
        for p in adapter:
            p.add_(torch.randn_like(p) * 0.3)
    padded, unpadded = twins(model)
    checked = compare(padded, unpadded, family, head)
    assert checked == sum(1 for p in padded.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_unpadded_with_gradient_checkpointing(family, tiny_checkpoints):
    """Training mode (dropout 0) with checkpointed layers: the packing travels through the recomputation."""
    model = load(tiny_checkpoints, family, "classification")
    padded, unpadded = twins(model)
    for m in (padded, unpadded):
        m.encoder.gradient_checkpointing = True
        for module in m.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        for layer in m.encoder.layers:
            layer.attention.core.dropout = 0.0
    assert compare(padded, unpadded, family, "classification", train=True) > 0


def test_efficient_kinds_keep_the_padded_path(tiny_checkpoints):
    model = nanoft.load_model(tiny_checkpoints[("bert", "classification")], num_labels=3, attention="performer",
                              unpad=True)
    assert model.config.unpad is True
    ids, mask, types = mixed_batch("bert")
    with packed_layer_inputs(model) as dims:
        model.eval()(ids, attention_mask=mask, token_type_ids=types)
    assert set(dims) == {3}


def test_load_option_and_bad_value(tiny_checkpoints):
    ckpt = tiny_checkpoints[("bert", "classification")]
    assert nanoft.load_model(ckpt, num_labels=3, unpad=True).config.unpad is True
    assert nanoft.load_model(ckpt, num_labels=3).config.unpad is None  # auto
    with pytest.raises(ConfigError, match="unpad"):
        nanoft.load_model(ckpt, num_labels=3, unpad="yes")


def test_auto_follows_the_measured_cpu_default(tiny_checkpoints, monkeypatch):
    """unpad=None on CPU does what UNPAD_CPU_DEFAULT (set from bench/results/unpad_cpu.md) says, and only
    for calls that return nothing at padding: hidden states and per-token logits stay the padded path's."""
    ids, mask, types = mixed_batch("bert")
    positions = masked_positions_of(mask)
    for head, kwargs, may_unpad in ((None, {}, False), ("classification", {}, True),
                                    ("token-classification", {}, False), ("masked-lm", {}, False),
                                    ("masked-lm", {"masked_positions": positions}, True)):
        model = load(tiny_checkpoints, "bert", head).eval()
        assert model.config.unpad is None
        for value in (True, False):
            monkeypatch.setattr(encoder_module, "UNPAD_CPU_DEFAULT", value)
            with packed_layer_inputs(model) as dims:
                model(ids, attention_mask=mask, token_type_ids=types, **kwargs)
            assert set(dims) == ({2} if value and may_unpad else {3}), (head, kwargs, value)
    assert encoder_module.unpad_by_default(torch.device("cpu"), torch.float32) is encoder_module.UNPAD_CPU_DEFAULT


# ---- the packed attention off CUDA ------------------------------------------------------------------------


def _packed(lengths, heads=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, d, generator=g, dtype=torch.float64) for _ in range(3))
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    return q, k, v, cu


def naive_attention(q, k, v, **pattern):
    """softmax(q k^T / sqrt(d)) v over the allowed keys, in the inputs' dtype (float64 here)."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    allowed = kernels.allowed_mask(q.shape[-2], k.shape[-2], **pattern)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("causal,window,num_global", [(False, None, 0), (True, None, 0), (False, 2, 0),
                                                      (False, 2, 1), (True, 3, 0)])
def test_varlen_sdpa_equals_per_sequence_reference(causal, window, num_global):
    """The device-side padded copy (impl="sdpa") gives each sequence's own attention, forward and backward,
    also with a zero-length sequence and a max_seqlen above the longest (a padded batch's width)."""
    lengths = [6, 1, 0, 9, 3]
    q, k, v, cu = _packed(lengths)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    got = kernels.varlen_attention(*leaves, cu, 12, causal=causal, window=window, num_global=num_global,
                                   impl="sdpa")
    grad_out = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=got.dtype)
    got_grads = torch.autograd.grad(got, leaves, grad_out)
    for b, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if start == end:
            continue
        seq = [t[start:end].detach().clone().transpose(0, 1)[None].requires_grad_() for t in (q, k, v)]
        want = naive_attention(*seq, causal=causal, window=window, num_global=num_global)
        assert (got[start:end] - want[0].transpose(0, 1)).abs().max() < 1e-10
        want_grads = torch.autograd.grad(want, seq, grad_out[start:end].transpose(0, 1)[None])
        for g_got, g_want in zip(got_grads, want_grads):
            assert (g_got[start:end] - g_want[0].transpose(0, 1)).abs().max() < 1e-10


# ---- no host reads on the hot path --------------------------------------------------------------------------


SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__")


@contextmanager
def host_reads():
    """Counts Python-level reads of tensor values (each one a device->host wait on an accelerator).

    torch.nonzero's wait (the packed size, once per unpadded forward) happens inside C++ and is not one of
    these; it is the single wait by design, see `Packing.of`."""
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _train_forward_backward(model, family="bert", positions=None):
    ids, mask, types = mixed_batch(family)
    model.train()
    kwargs = {"masked_positions": positions} if positions is not None else {}
    out = model(ids, attention_mask=mask, token_type_ids=types, **kwargs)
    out.float().sum().backward()


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("head", ["classification", "masked-lm"])
def test_hot_path_reads_nothing_back(unpad, head, tiny_checkpoints):
    """A training forward + backward (dropout on, LoRA, checkpointed layers) of either path reads no tensor
    value on the host: the padded mask is handed on as it is, the packing is built on the device."""
    model = load(tiny_checkpoints, "bert", head)
    peft.apply(model, "lora", r=2, alpha=4, targets=["query", "value"])
    model.config.unpad = unpad
    model.encoder.gradient_checkpointing = True
    positions = masked_positions_of(mixed_batch("bert")[1]) if head == "masked-lm" else None
    _train_forward_backward(model, positions=positions)  # warm-up: lazy imports and first-call set-up
    with host_reads() as calls, packed_layer_inputs(model) as dims:
        _train_forward_backward(model, positions=positions)
    assert set(dims) == ({2} if unpad else {3})
    assert calls == []


def test_host_read_counter_catches_a_regression(tiny_checkpoints, monkeypatch):
    """The check above is not vacuous: the old mask handling (look at the mask, drop it when it masks nothing)
    and a validated varlen call (which reads cu_seqlens back) are both caught."""
    model = load(tiny_checkpoints, "bert", "classification")

    def looks_at_the_mask(attention_mask):
        key_padding_mask = attention_mask == 0
        return key_padding_mask if bool(key_padding_mask.any()) else None

    monkeypatch.setattr(encoder_module, "key_padding_mask_of", looks_at_the_mask)
    model.config.unpad = False
    with host_reads() as calls:
        _train_forward_backward(model)
    assert "__bool__" in calls
    monkeypatch.undo()

    full = type(model.encoder.layers[0].attention.core)

    def validated_varlen(self, q, k, v, cu_seqlens, max_seqlen):
        return kernels.varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=self.scale)

    monkeypatch.setattr(full, "varlen", validated_varlen)
    model.config.unpad = True
    with host_reads() as calls:
        _train_forward_backward(model)
    assert "tolist" in calls


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("unpad", [False, True])
def test_cuda_step_waits_for_the_device_at_most_once(unpad):
    """On CUDA (bf16 autocast, Triton kernels, head_dim 32) a training forward + backward synchronises only
    where a shape depends on data: never padded, once unpadded (the packed size), whatever the layer count."""
    import warnings

    from nanoft.models import EncoderModel

    config = nanoft.ModelConfig(vocab_size=120, hidden_size=64, num_layers=3, num_heads=2, intermediate_size=128,
                                max_position_embeddings=64, unpad=unpad)
    torch.manual_seed(0)
    model = EncoderModel(config, head="classification", num_labels=3).init_weights().cuda().train()
    ids, mask, types = (t.cuda() for t in mixed_batch("bert"))

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, attention_mask=mask, token_type_ids=types)
        out.float().sum().backward()

    step()  # compile and tune the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught, packed_layer_inputs(model) as dims:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert set(dims) == ({2} if unpad else {3})
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == (1 if unpad else 0), syncs


# ---- training ---------------------------------------------------------------------------------------------


def final_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_twenty_steps_end_with_the_same_weights(tiny_config, tiny_task, tmp_path):
    """A 20-step fine-tuning run (random batches: lots of padding; dropout off) with unpad on and off."""
    from nanoft.train import Trainer

    runs = {}
    for unpad in (False, True):
        config = tiny_config(model=str(tiny_task["model_nodrop"]), max_steps=20, sampler="random", unpad=unpad,
                             lr=1e-3, output=str(tmp_path / f"run-{unpad}"))
        trainer = Trainer(config, progress=False)
        assert trainer.model.config.unpad is unpad
        trainer.eval_data = {}
        trainer.fit()
        assert trainer.step == 20
        runs[unpad] = final_weights(trainer)
    start = nanoft.load_model(tiny_task["model_nodrop"], num_labels=2).state_dict()
    moved = max((runs[False][k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the runs did train
    for name, want in runs[False].items():
        assert_close(runs[True][name], want, **TOL, msg=lambda m: f"{name}: {m}")


def test_masked_lm_pretraining_with_and_without_unpad(tiny_task, tmp_path):
    """The masked-LM objective (positions gathered from the packed tokens): 20 steps, same weights."""
    from nanoft.train.pretrain import PretrainConfig, build_pretraining

    words = [w for w in (tiny_task["model"] / "vocab.txt").read_text().split() if not w.startswith("[")]
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(2, 14)))
                                for _ in range(200)) + "\n", encoding="utf-8")
    runs = {}
    for unpad in (False, True):
        config = PretrainConfig(text_file=str(corpus), model=str(tiny_task["model_nodrop"]), max_length=16,
                                batch_size=8, max_steps=20, lr=1e-3, eval_every=20, output=str(tmp_path / f"r{unpad}"),
                                quiet=True, seed=0, precision="fp32", unpad=unpad)
        trainer = build_pretraining(config, progress=False)
        assert trainer.model.config.unpad is unpad
        trainer.fit()
        runs[unpad] = final_weights(trainer)
    for name, want in runs[False].items():
        assert_close(runs[True][name], want, **TOL, msg=lambda m: f"{name}: {m}")


def test_train_flag_and_config():
    """`nanoft train --unpad/--no-unpad` comes from the TrainConfig field; unset it is auto (None)."""
    from click.testing import CliRunner

    from nanoft.cli import cli, train_params
    from nanoft.train import TrainConfig

    option = next(p for p in train_params() if p.name == "unpad")
    assert (option.opts, option.secondary_opts) == (["--unpad"], ["--no-unpad"])
    assert "other --attention kinds keep the padded path" in option.help
    assert TrainConfig().unpad is None
    assert TrainConfig.from_dict({"unpad": False}).unpad is False
    help_text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    assert "--unpad / --no-unpad" in help_text
