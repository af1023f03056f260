"""PiSSA, VeRA and LoRA+: PiSSA's factors are the weight's principal part (numpy SVD) and its layer is the
paper's residual form; VeRA's shared pair is stored once and is the seed's draw; LoRA+ rates are exact."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nanoft
from nanoft import peft
from nanoft.errors import ConfigError
from nanoft.models import EncoderModel
from nanoft.train.optim import param_groups
from nanoft.weights.safetensors_io import SafetensorsFile

ALL_LINEAR = ["query", "key", "value", "attention.output", "ffn.intermediate", "ffn.output"]


def tiny(num_labels: int = 3) -> EncoderModel:
    """hidden 32, FFN 64, 2 layers; non-zero biases."""
    torch.manual_seed(0)
    config = nanoft.ModelConfig(family="bert", vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                                intermediate_size=64, max_position_embeddings=64)
    model = EncoderModel(config, head="classification", num_labels=num_labels).init_weights().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    return ids, mask


def perturb(model: nn.Module, std: float = 0.1) -> None:
    """Move every trainable tensor, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


def adapters(model: nn.Module):
    return {n: m.adapters["default"] for n, m in model.named_modules() if isinstance(m, peft.PeftLayer)}


def head_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.head.parameters())


# --------------------------------------------------------------------------------------------- PiSSA
def test_pissa_starts_at_the_principal_part_and_leaves_outputs_unchanged():
    base = tiny()
    ids, mask = batch()
    expected = base(ids, mask)
    model = peft.apply(copy.deepcopy(base), "pissa", r=4, alpha=8.0, targets=ALL_LINEAR)
    torch.testing.assert_close(model(ids, mask), expected, atol=1e-5, rtol=0)
    layers = adapters(model)
    assert len(layers) == 12
    for name, adapter in layers.items():
        w = base.get_submodule(name).weight.detach().double().numpy()
        assert torch.equal(model.get_submodule(name).base.weight, base.get_submodule(name).weight)  # untouched
        u, s, vh = np.linalg.svd(w, full_matrices=False)  # the reference: float64 numpy
        principal = (u[:, :4] * s[:4]) @ vh[:4]
        sba = (adapter.scale * adapter.lora_B @ adapter.lora_A).detach().double().numpy()
        np.testing.assert_allclose(sba, principal, atol=1e-5)
        # the frozen residual holds exactly the remaining singular values
        residual = adapter.residual(model.get_submodule(name).base).detach().double().numpy()
        np.testing.assert_allclose(np.linalg.svd(residual, compute_uv=False)[:len(s) - 4], s[4:], atol=1e-5)
        # A and B share sqrt(S_r / s): A Aᵀ = BᵀB = diag(S_r) / s
        np.testing.assert_allclose((adapter.lora_A @ adapter.lora_A.T).detach().numpy(),
                                   np.diag(s[:4] / adapter.scale), atol=1e-4)
    perturb(model)
    assert (model(ids, mask) - expected).abs().max() > 1e-3  # A and B are in the forward path


def test_pissa_layer_is_the_residual_form_in_float64():
    """y = W_res x + b + s·B·A·x with W_res = W − s·B0·A0 frozen: outputs and gradients of A, B (float64)."""
    torch.manual_seed(0)
    base = nn.Linear(12, 10).double()
    adapter = peft.PissaAdapter(base, r=3, alpha=6.0)
    w_res = base.weight.detach() - 2.0 * adapter.lora_B.detach() @ adapter.lora_A.detach()  # s = 6/3
    with torch.no_grad():
        adapter.lora_A.add_(torch.randn_like(adapter.lora_A) * 0.1)
        adapter.lora_B.add_(torch.randn_like(adapter.lora_B) * 0.1)
    x = torch.randn(5, 12, dtype=torch.float64)
    a = adapter.lora_A.detach().clone().requires_grad_(True)
    b = adapter.lora_B.detach().clone().requires_grad_(True)
    reference = x @ w_res.T + base.bias.detach() + 2.0 * (x @ a.T) @ b.T
    out = adapter(x, base)
    torch.testing.assert_close(out, reference, atol=1e-12, rtol=0)
    out.square().sum().backward()
    reference.square().sum().backward()
    torch.testing.assert_close(adapter.lora_A.grad, a.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(adapter.lora_B.grad, b.grad, atol=1e-10, rtol=0)
    assert base.weight.grad is not None  # (the plain layer's own grad; frozen in a model by mark_trainable)
    assert not adapter.pissa_A0.requires_grad and not adapter.pissa_B0.requires_grad


def test_pissa_merge_unmerge_exact():
    base = tiny()
    ids, mask = batch()
    model = peft.apply(copy.deepcopy(base), "pissa", r=4, targets=ALL_LINEAR)
    query = model.encoder.layers[0].attention.query
    w = base.encoder.layers[0].attention.query.weight
    peft.merge(model)  # at step 0 merging adds s·(B·A − B0·A0) = 0: W_res + s·B·A = W
    torch.testing.assert_close(query.base.weight, w, atol=1e-6, rtol=0)
    peft.unmerge(model)
    perturb(model)
    adapter = query.adapters["default"]
    out = model(ids, mask)
    merged_weight = adapter.residual(query.base) + adapter.scale * adapter.lora_B @ adapter.lora_A  # W_res + s·B·A
    peft.merge(model)
    torch.testing.assert_close(query.base.weight, merged_weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(ids, mask), out, atol=1e-5, rtol=0)
    peft.unmerge(model)
    torch.testing.assert_close(query.base.weight, w, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(ids, mask), out, atol=1e-5, rtol=0)
    plain = peft.merge_and_unload(copy.deepcopy(model))
    assert not any(isinstance(m, peft.PeftLayer) for m in plain.modules())
    torch.testing.assert_close(plain(ids, mask), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("niter", [0, 2])
def test_pissa_adapter_file_reloads_onto_the_original_base(niter, tmp_path):
    """The file holds A, B and the frozen start A0, B0, so a reload needs no SVD to come out the same: even
    the randomized SVD (niter 2), whose random draws differ at load time, reloads to identical logits."""
    base = tiny()
    ids, mask = batch()
    torch.manual_seed(10)
    model = peft.apply(copy.deepcopy(base), "pissa", r=4, niter=niter, targets=["query", "value", "ffn.output"])
    perturb(model)
    expected = model(ids, mask)
    peft.save_adapter(model, tmp_path)
    st = SafetensorsFile(tmp_path / peft.WEIGHTS_NAME)
    body = sorted(k.rsplit(".", 1)[1] for k in st.keys() if not k.startswith("head."))
    assert body == sorted(["lora_A", "lora_B", "pissa_A0", "pissa_B0"] * 6)
    torch.manual_seed(11)  # another random stream for the (discarded) SVD done while re-applying
    loaded = peft.load_adapter(copy.deepcopy(base), tmp_path)
    assert torch.equal(loaded(ids, mask), expected)
    for name, adapter in adapters(loaded).items():
        assert torch.equal(loaded.get_submodule(name).base.weight, base.get_submodule(name).weight)
    plain = peft.unload(loaded).state_dict()  # the base comes back exactly (the trained head stays)
    assert all(torch.equal(v, plain[k]) for k, v in base.state_dict().items() if not k.startswith("head."))


# --------------------------------------------------------------------------------------------- VeRA
def test_vera_shared_pair_stored_once_reproducible_from_the_seed(tmp_path):
    base = tiny()
    ids, mask = batch()
    expected = base(ids, mask)
    r = 16
    model = peft.apply(copy.deepcopy(base), "vera", r=r, seed=7, targets=ALL_LINEAR)
    assert torch.equal(model(ids, mask), expected)  # b starts at zero
    layers = adapters(model)
    shared = {id(a.shared.vera_A) for a in layers.values()} | {id(a.shared.vera_B) for a in layers.values()}
    assert len(shared) == 2  # one pair in memory for all 12 layers
    # trainable = per layer d (r) + b (out); out is 32 except ffn.intermediate (64); plus the head
    per_encoder_layer = 6 * r + 5 * 32 + 64
    assert peft.trainable_summary(model)["trainable"] == 2 * per_encoder_layer + head_count(model)
    perturb(model)
    out = model(ids, mask)
    peft.save_adapter(model, tmp_path)
    st = SafetensorsFile(tmp_path / peft.WEIGHTS_NAME)
    body = {k: st.tensor(k) for k in st.keys() if not k.startswith("head.")}
    matrices = {k: t for k, t in body.items() if t.dim() == 2}
    assert len(matrices) == 2  # the shared pair, once; everything else is a vector
    assert sorted(k.rsplit(".", 1)[1] for k in body if body[k].dim() == 1) == sorted(
        ["vera_lambda_d", "vera_lambda_b"] * 12)
    a = next(t for k, t in matrices.items() if k.endswith("vera_A"))
    b = next(t for k, t in matrices.items() if k.endswith("vera_B"))
    assert a.shape == (r, 64) and b.shape == (64, r)  # the largest layer's input and output
    # the seed's draw: Kaiming-uniform as nn.Linear, A then B, from torch.Generator().manual_seed(7)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(a, nn.init.kaiming_uniform_(torch.empty(r, 64), a=math.sqrt(5), generator=g))
    assert torch.equal(b, nn.init.kaiming_uniform_(torch.empty(64, r), a=math.sqrt(5), generator=g))
    other = peft.apply(copy.deepcopy(base), "vera", r=r, seed=8, targets=ALL_LINEAR)
    assert not torch.equal(next(iter(adapters(other).values())).shared.vera_A, a)
    # the file: vectors (4 bytes each) + one pair + the head
    n_vectors = 2 * per_encoder_layer
    assert sum(t.numel() for t in body.values()) == n_vectors + 2 * r * 64
    loaded = peft.load_adapter(copy.deepcopy(base), tmp_path)
    assert torch.equal(loaded(ids, mask), out)


def test_vera_delta_and_merge_unmerge_exact():
    base = tiny()
    ids, mask = batch()
    model = peft.apply(copy.deepcopy(base), "vera", r=8, targets=["value", "ffn.intermediate"])
    perturb(model)
    out = model(ids, mask)
    layer = model.encoder.layers[1].ffn.intermediate  # 32 → 64
    adapter = layer.adapters["default"]
    w = layer.base.weight.detach().double().numpy().copy()
    a = adapter.shared.vera_A.double().numpy()[:, :32]
    b = adapter.shared.vera_B.double().numpy()[:64]
    d = adapter.vera_lambda_d.detach().double().numpy()
    lb = adapter.vera_lambda_b.detach().double().numpy()
    peft.merge(model)
    np.testing.assert_allclose(layer.base.weight.detach().double().numpy(), w + np.diag(lb) @ b @ np.diag(d) @ a,
                               atol=1e-6)
    torch.testing.assert_close(model(ids, mask), out, atol=1e-5, rtol=0)
    peft.unmerge(model)
    np.testing.assert_allclose(layer.base.weight.detach().double().numpy(), w, atol=1e-6)
    torch.testing.assert_close(model(ids, mask), out, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("method,trained", [("pissa", {"lora_A", "lora_B"}), ("vera", {"vera_lambda_b"})])
def test_only_the_adapter_and_head_train(method, trained):
    """After a backward pass and an SGD step: gradients exist only for the adapter's own parameters and the
    head; the base model, PiSSA's A0/B0 and VeRA's shared pair are unchanged."""
    model = peft.apply(tiny(), method, r=4, targets=["query", "ffn.output"])
    model.train()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".head." not in f".{k}"
              and not any(k.endswith(t) for t in ("lora_A", "lora_B", "vera_lambda_b", "vera_lambda_d"))}
    ids, mask = batch()
    F.cross_entropy(model(ids, mask), torch.tensor([0, 1, 2])).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    own = {n.rsplit(".", 1)[1] for n in with_grad if not n.startswith("head.")}
    assert own == trained and any(n.startswith("head.") for n in with_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())


# --------------------------------------------------------------------------------------------- LoRA+
@pytest.mark.parametrize("method", ["lora", "rslora", "dora", "pissa"])
def test_lora_plus_group_rates_with_llrd_and_weight_decay(method):
    model = peft.apply(tiny(), method, r=4, targets=["query", "value"])
    groups = param_groups(model, 1e-3, weight_decay=0.01, layerwise_lr_decay=0.5, lora_plus_ratio=16.0)
    rate = {}  # name → (lr, weight decay)
    for g in groups:
        rate.update({n: (g["lr"], g["weight_decay"]) for n in g["names"]})
    assert len(rate) == sum(1 for _ in model.named_parameters())  # every parameter once
    # depth: layer i is i+1, the head 3; LLRD 0.5 → layer 0: 1e-3/4, layer 1: 1e-3/2 (exact: powers of two)
    for layer, base_rate in ((0, 2.5e-4), (1, 5e-4)):
        for proj in ("query", "value"):
            prefix = f"encoder.layers.{layer}.attention.{proj}.adapters.default."
            assert rate[prefix + "lora_A"] == (base_rate, 0.01)
            assert rate[prefix + "lora_B"] == (base_rate * 16.0, 0.01)
            assert rate[prefix + "lora_B"][0] == 16.0 * rate[prefix + "lora_A"][0]
            if method == "dora":  # the magnitude vector: A's rate, no decay
                assert rate[prefix + "lora_magnitude"] == (base_rate, 0.0)
    head = [v for n, v in rate.items() if n.startswith("head.")]
    assert head and all(lr == 1e-3 for lr, _ in head)
    without = {n: g["lr"] for g in param_groups(model, 1e-3, 0.01, 0.5) for n in g["names"]}
    assert all(without[n] == rate[n][0] for n in without if not n.endswith("lora_B"))


def test_lora_plus_needs_a_lora_family_adapter(tiny_config):
    with pytest.raises(ConfigError, match="trains none"):
        param_groups(peft.apply(tiny(), "vera", r=4), 1e-3, lora_plus_ratio=16.0)
    with pytest.raises(ConfigError, match="trains none"):
        param_groups(tiny(), 1e-3, lora_plus_ratio=16.0)
    with pytest.raises(ConfigError, match="needs --peft"):
        tiny_config(lora_plus_ratio=16.0).validate()
    with pytest.raises(ConfigError, match="lora_plus_ratio must be > 0"):
        tiny_config(peft="lora", lora_plus_ratio=0.0).validate()


# --------------------------------------------------------------------------------------------- runs
def test_cli_flags_for_the_new_methods():
    from nanoft.cli import config_from_cli, train

    def parse(*args: str):
        return config_from_cli(train.make_context("train", list(args)))

    config = parse("--task", "sst2", "--peft", "pissa", "--lora-r", "4", "--pissa-niter", "2",
                   "--lora-plus-ratio", "8")
    assert config.peft == "pissa" and config.peft_options == {"r": 4, "niter": 2} and config.lora_plus_ratio == 8.0
    config = parse("--task", "sst2", "--peft", "vera", "--vera-r", "64", "--vera-seed", "3", "--vera-d-init", "0.5")
    assert config.peft_options == {"r": 64, "seed": 3, "d_init": 0.5}


def test_pissa_lora_plus_run_resumes_bit_for_bit(tiny_config, tmp_path, monkeypatch):
    """Through the Trainer: LoRA+ groups, and the checkpoint holds PiSSA's frozen start (not recomputed)."""
    from nanoft.train import Trainer
    from nanoft.train.checkpointer import TRAINABLE

    options = dict(peft="pissa", peft_options={"r": 2, "niter": 1}, lora_plus_ratio=4.0, max_steps=4)
    full = Trainer(tiny_config(output=str(tmp_path / "full"), **options))
    rates = {n: g["base_lr"] for g in full.optimizer.param_groups for n in g["names"]}
    b = [n for n in rates if n.endswith("lora_B")]
    assert b and all(rates[n] == 4.0 * rates[n[:-1] + "A"] for n in b)
    full.fit()
    cut = Trainer(tiny_config(output=str(tmp_path / "cut"), **options))
    cut.fit(stop_at_step=2)
    keys = SafetensorsFile(tmp_path / "cut" / "checkpoint" / TRAINABLE).keys()
    assert sum(k.endswith(("pissa_A0", "pissa_B0")) for k in keys) == 24  # 2 layers × 6 default targets × A0, B0
    from nanoft.peft import pissa

    exact = pissa.principal_factors  # the resumed run's SVD comes out different; the checkpoint's start must win
    monkeypatch.setattr(pissa, "principal_factors", lambda *args: tuple(t + 1e-3 for t in exact(*args)))
    resumed = Trainer(tiny_config(output=str(tmp_path / "cut"), resume=True, **options))
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vera_run_through_the_trainer(tiny_config):
    """`--peft vera` trains, checkpoints and exports: the shared pair once in each file; the exported adapter
    reloads onto the base checkpoint with the trained model's logits."""
    from nanoft.train import Trainer
    from nanoft.train.checkpointer import TRAINABLE

    trainer = Trainer(tiny_config(peft="vera", peft_options={"r": 8, "seed": 3}, max_steps=2, epochs=1))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    moved = {n.rsplit(".", 1)[1] for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])
             and not n.startswith("head.")}
    assert moved == {"vera_lambda_b", "vera_lambda_d"}
    run = trainer.run_dir
    for path in (run.checkpoint / TRAINABLE, run.best / "adapter" / peft.WEIGHTS_NAME):
        keys = SafetensorsFile(path).keys()
        assert sum(k.endswith(("vera_A", "vera_B")) for k in keys) == 2, path
    base = nanoft.load_model(tiny_config().model, head="classification", num_labels=trainer.model.num_labels)
    loaded = peft.load_adapter(base.eval(), run.best / "adapter")
    ids = torch.randint(3, base.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(ids), trainer.model.eval()(ids), atol=1e-6, rtol=0)
