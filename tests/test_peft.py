"""PEFT: identity at init, exact parameter counts, merge/unmerge, plain checkpoints, adapter files."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nanoft
from nanoft import peft
from nanoft.errors import CheckpointError, ConfigError
from nanoft.models import EncoderModel
from nanoft.weights.safetensors_io import SafetensorsFile

MERGEABLE = ["lora", "rslora", "dora", "ia3"]
ALL = MERGEABLE + ["houlsby", "pfeiffer"]
ALL_TARGETS = ["query", "key", "value", "attention.output", "ffn.intermediate", "ffn.output"]


def tiny(family: str = "bert", num_labels: int = 3, seed: int = 0, **overrides) -> EncoderModel:
    torch.manual_seed(seed)
    sizes = dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                 max_position_embeddings=64)
    if family == "roberta":
        sizes.update(pad_token_id=1, position_offset=2, max_position_embeddings=66, type_vocab_size=1)
    config = nanoft.ModelConfig(family=family, **{**sizes, **overrides})
    model = EncoderModel(config, head="classification", num_labels=num_labels).init_weights().eval()
    with torch.no_grad():  # non-zero biases, so that bias handling in merges is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def perturb(model: nn.Module, std: float = 0.1, seed: int = 1) -> None:
    """Move every trainable tensor away from its init, as training would (IA³ scales stay positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=g) * std
                p.add_(noise.abs() if name.endswith("ia3_scale") else noise)


def method_options(method: str):
    return {"houlsby": dict(reduction_factor=4), "pfeiffer": dict(reduction_factor=4)}.get(method, {})


# --------------------------------------------------------------------------------- identity at init
@pytest.mark.parametrize("method", ALL + ["bitfit"])
def test_outputs_equal_base_right_after_apply(method):
    base = tiny()
    ids, mask = batch()
    expected = base(ids, mask)
    model = peft.apply(copy.deepcopy(base), method, **method_options(method))
    assert torch.equal(model(ids, mask), expected)
    if method != "bitfit":  # and the new tensors are really in the forward path
        perturb(model)
        assert (model(ids, mask) - expected).abs().max() > 1e-3


def test_lora_embedding_target_is_identity_then_learns():
    base = tiny()
    ids, mask = batch()
    model = peft.apply(copy.deepcopy(base), "lora", targets=["word", "query"])
    assert isinstance(model.encoder.embeddings.word, peft.PeftLayer)
    assert torch.equal(model(ids, mask), base(ids, mask))
    perturb(model)
    out = model(ids, mask)
    peft.merge(model)
    assert torch.allclose(model(ids, mask), out, atol=1e-5)


# --------------------------------------------------------------------------------- exact counts on MiniLM
@pytest.fixture(scope="module")
def minilm():
    return nanoft.load_model(head="classification", num_labels=2)


def test_minilm_lora_counts(minilm):
    h, layers = 384, 6
    head = h * h + h + h * 2 + 2
    model = peft.apply(copy.deepcopy(minilm), "lora", r=8, alpha=16, targets=["query", "value"])
    summary = peft.trainable_summary(model)
    assert summary["trainable"] == 2 * layers * 2 * 8 * h + head
    assert summary["total"] == sum(p.numel() for p in minilm.parameters()) + 2 * layers * 2 * 8 * h
    assert summary["percent"] == pytest.approx(100 * summary["trainable"] / summary["total"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * layers * 2 + 4
    assert all(".lora_" in n or n.startswith("head.") for n in trainable)


@pytest.mark.parametrize("method,options,expected", [
    ("dora", dict(r=4, targets="query,key"), 6 * 2 * (2 * 4 * 384 + 384)),
    ("ia3", {}, 6 * (384 + 384 + 1536)),
    ("houlsby", dict(reduction_factor=16), 6 * 2 * (384 * 24 + 24 + 24 * 384 + 384)),
    ("pfeiffer", dict(reduction_factor=16), 6 * (384 * 24 + 24 + 24 * 384 + 384)),
    # per layer: q, k, v, o, ffn.output and both LayerNorms (384 each) + ffn.intermediate (1536); embedding norm
    ("bitfit", {}, 6 * (7 * 384 + 1536) + 384),
])
def test_minilm_counts_other_methods(minilm, method, options, expected):
    model = peft.apply(copy.deepcopy(minilm), method, train_head=False, **options)
    assert peft.trainable_summary(model)["trainable"] == expected


# --------------------------------------------------------------------------------- targets
def test_targets_by_name_glob_and_regex():
    names = lambda m: sorted(n for n, _ in peft.adapter_parameters(m).items() if "lora_A" in n)  # noqa: E731
    plain = peft.apply(tiny(), "lora", targets="query, ffn.output", train_head=False)
    assert names(plain) == ["encoder.layers.0.attention.query.lora_A", "encoder.layers.0.ffn.output.lora_A",
                            "encoder.layers.1.attention.query.lora_A", "encoder.layers.1.ffn.output.lora_A"]
    glob = peft.apply(tiny(), "lora", targets=["encoder.layers.1.attention.*"], train_head=False)
    assert len(names(glob)) == 4 and all(".layers.1.attention." in n for n in names(glob))
    regex = peft.apply(tiny(), "lora", targets=[r"re:encoder\.layers\.0\.attention\.(key|value)"], train_head=False)
    assert names(regex) == ["encoder.layers.0.attention.key.lora_A", "encoder.layers.0.attention.value.lora_A"]


def test_unmatched_target_lists_available_layers():
    model = tiny()
    with pytest.raises(ConfigError) as e:
        peft.apply(model, "lora", targets=["query", "q_lin"])
    message = str(e.value)
    assert "'q_lin'" in message and "attention.query" in message and "ffn.intermediate" in message
    assert "layers.0" not in message  # compressed: one entry per kind of layer
    assert not any(isinstance(m, peft.PeftLayer) for m in model.modules())  # nothing half-applied
    with pytest.raises(ConfigError, match="unknown PEFT method"):
        peft.apply(tiny(), "prefix-tuning")
    with pytest.raises(ConfigError, match="rank"):
        peft.apply(tiny(), "lora", rank=4)


# --------------------------------------------------------------------------------- merge / unmerge
def test_lora_linear_math_and_litgpt_merge():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    w0 = base.weight.detach().clone()
    layer = peft.LoraLinear(base, r=4, alpha=8)
    adapter = layer.adapters["default"]
    with torch.no_grad():
        adapter.lora_B.normal_()
    x = torch.randn(5, 12)
    expected = F.linear(x, w0 + (8 / 4) * adapter.lora_B @ adapter.lora_A, base.bias)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer.merge()
    layer.merge()  # twice == once
    assert torch.allclose(base.weight, w0 + (8 / 4) * adapter.lora_B @ adapter.lora_A, atol=1e-6)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer.unmerge()
    layer.unmerge()
    assert torch.allclose(base.weight, w0, atol=1e-6)


def test_dora_merge_is_magnitude_times_direction():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    w0 = base.weight.detach().clone()
    layer = peft.LoraLinear(base, r=4, alpha=8, dora=True)
    adapter = layer.adapters["default"]
    assert torch.allclose(adapter.lora_magnitude, w0.norm(dim=1))  # DoRA init: row norms of W
    with torch.no_grad():
        adapter.lora_B.normal_()
        adapter.lora_magnitude.mul_(1.5)
    v = w0 + 2.0 * adapter.lora_B @ adapter.lora_A
    expected_w = adapter.lora_magnitude[:, None] * v / v.norm(dim=1, keepdim=True)
    x = torch.randn(5, 12)
    out = layer(x)
    assert torch.allclose(out, F.linear(x, expected_w, base.bias), atol=1e-5)
    layer.merge()
    assert torch.allclose(base.weight, expected_w, atol=1e-6)
    layer.unmerge()
    assert torch.allclose(base.weight, w0, atol=1e-6)


@pytest.mark.parametrize("method", MERGEABLE)
def test_model_merge_unmerge_exact(method):
    base = tiny()
    ids, mask = batch()
    targets = ["key", "value", "ffn.output"] if method == "ia3" else ALL_TARGETS
    model = peft.apply(copy.deepcopy(base), method, targets=targets)
    perturb(model)
    unmerged = model(ids, mask)
    peft.merge(model)
    assert torch.allclose(model(ids, mask), unmerged, atol=1e-5)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft.merge(model)  # merging twice must not apply the update twice
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    peft.unmerge(model)
    assert torch.allclose(model(ids, mask), unmerged, atol=1e-5)
    restored = peft.unload(model).state_dict()  # the pretrained weights are back
    for name, tensor in base.state_dict().items():
        if not name.startswith("head."):
            assert torch.allclose(restored[name], tensor, atol=1e-6), name


def test_merged_copy_leaves_the_training_model_alone():
    ids, mask = batch()
    model = peft.apply(tiny(), "lora")
    perturb(model)
    expected = model(ids, mask)
    plain = peft.merged_copy(model)
    assert not peft.is_peft_model(plain) and peft.is_peft_model(model)
    assert not any(isinstance(m, peft.PeftLayer) for m in plain.modules())
    assert all(layer.merged is None for layer in model.modules() if isinstance(layer, peft.PeftLayer))
    assert torch.allclose(plain(ids, mask), expected, atol=1e-5)
    assert torch.equal(model(ids, mask), expected)


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer"])
def test_bottleneck_adapters_refuse_to_merge(method):
    model = peft.apply(tiny(), method)
    assert not peft.is_mergeable(model)
    with pytest.raises(ConfigError, match="cannot be merged"):
        peft.merge_and_unload(model)
    with pytest.raises(ConfigError, match="cannot be merged"):
        peft.merged_copy(model)
    assert all(layer.merged is None for layer in model.modules() if isinstance(layer, peft.PeftLayer))


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_merged_model_saves_plain_checkpoint_for_nanoft_and_transformers(method, tmp_path):
    import transformers

    ids, mask = batch()
    targets = ["key", "value", "ffn.output"] if method == "ia3" else ALL_TARGETS
    model = peft.apply(tiny(), method, targets=targets)
    perturb(model)
    expected = model(ids, mask)
    peft.merge_and_unload(model)
    assert not any(isinstance(m, (peft.PeftLayer, peft.HeadSwitch)) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    nanoft.save_model(model, tmp_path)
    reloaded = nanoft.load_model(tmp_path)
    assert torch.allclose(reloaded(ids, mask), expected, atol=1e-5)
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits, expected, atol=1e-5)


# --------------------------------------------------------------------------------- adapter files
@pytest.mark.parametrize("method", ["lora", "dora", "houlsby", "ia3", "bitfit"])
def test_adapter_file_round_trip(method, tmp_path):
    base = tiny()
    ids, mask = batch()
    model = peft.apply(copy.deepcopy(base), method, **method_options(method))
    perturb(model)
    expected = model(ids, mask)
    peft.save_adapter(model, tmp_path)
    st = SafetensorsFile(tmp_path / peft.WEIGHTS_NAME)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(list(st.keys())) == len(trainable)  # exactly the trained tensors, head included
    assert "head.out.weight" in st.keys()
    size = (tmp_path / peft.WEIGHTS_NAME).stat().st_size
    assert peft.adapter_nbytes(model) < size < peft.adapter_nbytes(model) + 16_384  # tensors + a small header
    config = json.loads((tmp_path / peft.CONFIG_NAME).read_text())
    assert config["method"] == method and config["base"]["hidden_size"] == 32

    fresh = peft.load_adapter(copy.deepcopy(base), tmp_path)
    assert torch.equal(fresh(ids, mask), expected)
    assert peft.trainable_summary(fresh) == peft.trainable_summary(model)


def test_adapter_on_wrong_base_is_a_clear_error(tmp_path):
    model = peft.apply(tiny(), "lora")
    peft.save_adapter(model, tmp_path)
    with pytest.raises(CheckpointError, match=r"family 'bert' ≠ 'roberta'"):
        peft.load_adapter(tiny("roberta"), tmp_path)
    with pytest.raises(CheckpointError, match=r"hidden_size 32 ≠ 48"):
        peft.load_adapter(tiny(hidden_size=48), tmp_path)
    wrong_labels = tiny(num_labels=5)
    with pytest.raises(CheckpointError, match=r"head\.out\.weight has shape \(3, 32\) .* expects \(5, 32\)"):
        peft.load_adapter(wrong_labels, tmp_path)
    assert not any(isinstance(m, peft.PeftLayer) for m in wrong_labels.modules())


def test_adapter_file_with_wrong_tensor_shape_names_it_and_rolls_back(tmp_path):
    peft.save_adapter(peft.apply(tiny(), "lora", r=8), tmp_path)
    path = tmp_path / peft.CONFIG_NAME
    config = json.loads(path.read_text())
    config["options"]["r"] = 4  # the file's tensors are rank 8
    path.write_text(json.dumps(config))
    base = tiny()
    with pytest.raises(CheckpointError, match=r"attention\.query\.lora_A has shape \(8, 32\) .* expects \(4, 32\)"):
        peft.load_adapter(base, tmp_path)
    assert not any(isinstance(m, peft.PeftLayer) for m in base.modules())
    assert not peft.adapters_of(base)


# --------------------------------------------------------------------------------- several adapters
def test_named_adapters_switch_with_their_heads(tmp_path):
    base = tiny()
    ids, mask = batch()
    model = copy.deepcopy(base)
    peft.add_adapter(model, "sst2", "lora", r=4, targets=["query", "value"])
    peft.add_adapter(model, "mnli", "ia3")
    assert isinstance(model.head, peft.HeadSwitch)
    peft.set_adapter(model, "sst2")
    perturb(model, seed=1)
    out_a = model(ids, mask)
    peft.set_adapter(model, "mnli")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".mnli." in n for n in trainable)  # adapters.mnli.* and heads.mnli.*
    perturb(model, seed=2)
    out_b = model(ids, mask)
    assert (out_a - out_b).abs().max() > 1e-3
    peft.set_adapter(model, "sst2")
    assert torch.equal(model(ids, mask), out_a)

    peft.save_adapter(model, tmp_path / "a", name="sst2")
    peft.save_adapter(model, tmp_path / "b", name="mnli")
    other = copy.deepcopy(base)
    peft.load_adapter(other, tmp_path / "a")
    peft.load_adapter(other, tmp_path / "b")
    assert peft.active_adapter(other) == "mnli" and torch.equal(other(ids, mask), out_b)
    peft.set_adapter(other, "sst2")
    assert torch.equal(other(ids, mask), out_a)
    peft.merge_and_unload(other)  # keeps the active adapter and its head
    assert torch.allclose(other(ids, mask), out_a, atol=1e-5)


# --------------------------------------------------------------------------------- training
def test_optimizer_state_only_for_trainable_params():
    model = peft.apply(tiny(), "lora", targets=["query", "value"]).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids, mask = batch()
    F.cross_entropy(model(ids, mask), torch.tensor([0, 1, 2])).backward()
    opt.step()
    assert len(opt.state) == len(params) == 2 * 2 * 2 + 4
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None and torch.equal(p, frozen[name]), name


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_bf16_autocast_keeps_dtypes_and_gradient_accumulation(method):
    targets = ["key", "value", "ffn.output"] if method == "ia3" else ["query", "value", "ffn.intermediate"]
    model = peft.apply(tiny(), method, targets=targets)
    perturb(model)
    ids, mask = batch()
    labels = torch.tensor([0, 1, 2])
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for layer in model.encoder.layers[0].attention.children():
            if isinstance(layer, (nn.Linear, peft.PeftLayer)):  # wrapped or not, the same dtype out
                assert layer(x).dtype == torch.bfloat16
        F.cross_entropy(model(ids, mask), labels).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

    model.zero_grad()
    F.cross_entropy(model(ids, mask), labels).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    for part in (slice(0, 1), slice(1, 3)):  # two micro-batches, losses weighted by their share
        n = part.stop - part.start
        (F.cross_entropy(model(ids[part], mask[part]), labels[part]) * n / 3).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, full[name], atol=1e-6), name


def test_works_with_efficient_attention():
    from nanoft import attention

    kind = "longformer" if "longformer" in attention.available() else pytest.fail("no longformer registered")
    base = tiny(attention=kind, attention_options={"window": 2})
    ids, mask = batch()
    expected = base(ids, mask)
    model = peft.apply(copy.deepcopy(base), "lora", targets=ALL_TARGETS)
    assert torch.equal(model(ids, mask), expected)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".core." in n)
    perturb(model)
    out = model(ids, mask)
    out.sum().backward()
    peft.merge(model)
    assert torch.allclose(model(ids, mask), out, atol=1e-5)


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_linear_matches_its_formula_values_and_gradients(rslora):
    """The fused path (addmm, scale on B) is y = W x + b + s·B·A x: values and every gradient agree with that
    formula written out in float64 (1e-12), and a finite-difference gradcheck passes."""
    from nanoft.peft.lora import LoraLinear

    torch.manual_seed(0)
    base = nn.Linear(6, 5).double().requires_grad_(False)  # frozen, as peft.apply leaves it
    layer = LoraLinear(base, r=3, alpha=4.0, rslora=rslora).double()
    adapter = layer.adapters["default"]
    with torch.no_grad():
        adapter.lora_B.normal_()  # B starts at zero; a random B makes the low-rank path visible
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    s = 4.0 / (3 ** 0.5 if rslora else 3)
    a, b = adapter.lora_A.detach().clone().requires_grad_(), adapter.lora_B.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    expected = x_ref @ base.weight.T + base.bias + s * (x_ref @ a.T) @ b.T
    got = layer(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    for mine, ref in ((x.grad, x_ref.grad), (adapter.lora_A.grad, a.grad), (adapter.lora_B.grad, b.grad)):
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)
    names = ("adapters.default.lora_A", "adapters.default.lora_B")
    as_function = lambda x, a, b: torch.func.functional_call(layer, dict(zip(names, (a, b))), (x,))
    assert torch.autograd.gradcheck(as_function, (x.detach().requires_grad_(), a.detach().requires_grad_(),
                                                  b.detach().requires_grad_()))
