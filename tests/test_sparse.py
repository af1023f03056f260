"""Sparse encoders (nanoft.sparse and the sparsity technique): exact sparsity counts, masks that hold
through AdamW, the cubic schedule, RigL's drop/grow on a hand-made case, 2:4 groups, exact resume,
export to the HF layout, honest counts in results.json, and bad input. Tiny models, a few steps."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

import nanoft
from nanoft import sparse
from nanoft.errors import ConfigError
from nanoft.models import EncoderModel
from nanoft.weights.safetensors_io import SafetensorsFile
from nanoft.sparse import SparsityOptions
from nanoft.train import Trainer


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0) -> EncoderModel:
    config = nanoft.ModelConfig(family="bert", vocab_size=40, hidden_size=16, num_layers=2, num_heads=2,
                                intermediate_size=32, max_position_embeddings=16, hidden_dropout=0.0,
                                attention_dropout=0.0)
    torch.manual_seed(seed)
    return EncoderModel(config, head="classification", num_labels=2).init_weights()


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def train_steps(model, pruner, steps, total, lr=1e-2, seed=0, record=None):
    """`steps` AdamW steps (weight decay, momentum) on random inputs, with the pruner's hooks."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.999))
    g = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        ids = torch.randint(5, 40, (4, 8), generator=g)
        loss = torch.nn.functional.cross_entropy(model(ids), torch.randint(0, 2, (4,), generator=g))
        loss.backward()
        pruner.before_optimizer_step(step, total, optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        pruner.after_step(step, total, optimizer)
        if record is not None:
            record(step, optimizer)
    return optimizer


# ------------------------------------------------------------------ one-shot magnitude
@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
def test_one_shot_reaches_the_target_exactly(distribution):
    model = tiny_model()
    pruner = sparse.build("magnitude", model, SparsityOptions(sparsity=0.75, sparsity_distribution=distribution))
    pruner.setup()
    linear = {n: p for n, p in model.named_parameters() if n.startswith("encoder.layers.") and p.ndim == 2}
    assert set(pruner.weights) == set(linear)  # default: every encoder linear weight, nothing else
    total = sum(p.numel() for p in linear.values())
    assert sum(zeros(p) for p in linear.values()) == round(0.75 * total)
    if distribution == "uniform":
        for name, p in linear.items():
            assert zeros(p) == round(0.75 * p.numel()), name
    assert zeros(model.encoder.embeddings.word.weight) <= model.config.hidden_size  # only the padding row


def test_global_and_per_layer_pick_the_right_weights():
    a = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    b = torch.tensor([[10.0, 20.0], [-30.0, 40.0]])
    per_layer = sparse.magnitude_masks({"a": a, "b": b}, 0.5, "uniform")
    assert per_layer["a"].tolist() == [[False, False], [True, True]]
    assert per_layer["b"].tolist() == [[False, False], [True, True]]
    both = sparse.magnitude_masks({"a": a, "b": b}, 0.5, "global")
    assert both["a"].tolist() == [[False, False], [False, False]]
    assert both["b"].tolist() == [[True, True], [True, True]]


def test_erk_keeps_the_global_density_and_small_matrices_denser():
    shapes = {"small": torch.Size([8, 8]), "big": torch.Size([64, 64])}
    d = sparse.erk_densities(shapes, 0.05)
    assert math.isclose(d["small"] * 64 + d["big"] * 4096, 0.05 * (64 + 4096), rel_tol=1e-12)
    assert d["small"] / d["big"] == pytest.approx((16 / 64) / (128 / 4096))  # (n_in + n_out) / (n_in · n_out)
    d = sparse.erk_densities(shapes, 0.2)  # the small one would exceed 1: it stays dense, the big one pays
    assert d["small"] == 1.0 and d["big"] == pytest.approx((0.2 * 4160 - 64) / 4096)


def test_report_counts_three_ways_by_direct_count():
    model = tiny_model()
    pruner = sparse.build("magnitude", model, SparsityOptions(sparsity=0.5))
    pruner.setup()
    report = sparse.sparsity_report(model, pruner.masks)
    params = dict(model.named_parameters())
    enc = [p for n, p in params.items() if n.startswith("encoder.")]
    assert report["pruned"]["zeros"] == sum(zeros(params[n]) for n in pruner.masks)
    assert report["encoder"] == {"zeros": sum(map(zeros, enc)), "total": sum(p.numel() for p in enc),
                                 "sparsity": sum(map(zeros, enc)) / sum(p.numel() for p in enc)}
    assert report["model"]["total"] == sum(p.numel() for p in params.values())
    assert report["pruned"]["sparsity"] == 0.5 and report["encoder"]["sparsity"] < 0.5  # embeddings stay dense


# ------------------------------------------------------------------ masks hold through the optimizer
def test_pruned_weights_stay_exactly_zero_through_adamw_with_decay_and_momentum():
    model = tiny_model()
    # gradual: weights are pruned mid-run, when AdamW already holds moments for them
    pruner = sparse.build("gradual", model, SparsityOptions(sparsity=0.8, prune_start=2, prune_end=8, prune_every=2))
    pruner.setup()
    start = {n: w.detach().clone() for n, w in pruner.weights.items()}
    seen = []

    def check(step, optimizer):
        for name, w in pruner.weights.items():
            mask = pruner.masks[name]
            assert torch.all(w[~mask] == 0), (step, name)
            for value in optimizer.state[w].values():
                if value.shape == w.shape:
                    assert torch.all(value[~mask] == 0), (step, name)
        seen.append(sum(int((~m).sum()) for m in pruner.masks.values()))

    train_steps(model, pruner, 16, 16, record=check)
    assert seen[-1] == sum(round(0.8 * w.numel()) for w in pruner.weights.values())
    kept = [(w.detach() != start[n])[pruner.masks[n]].float().mean() for n, w in pruner.weights.items()]
    assert min(kept) > 0.9  # the kept weights did train


def test_gradients_are_masked_before_the_optimizer_step():
    model = tiny_model()
    pruner = sparse.build("magnitude", model, SparsityOptions(sparsity=0.5))
    pruner.setup()
    ids = torch.randint(5, 40, (2, 6))
    model(ids).sum().backward()
    pruner.before_optimizer_step(1, 10)
    for name, w in pruner.weights.items():
        assert torch.all(w.grad[~pruner.masks[name]] == 0)
        assert (w.grad[pruner.masks[name]] != 0).any()


# ------------------------------------------------------------------ gradual schedule
def test_cubic_schedule_hand_computed_values():
    s = lambda t: sparse.cubic_sparsity(t, 0.0, 0.8, 10, 50, 10)  # noqa: E731
    assert s(9) == 0.0 and s(10) == 0.0
    assert s(20) == pytest.approx(0.8 - 0.8 * 0.75 ** 3)  # 0.4625
    assert s(29) == pytest.approx(0.4625)                   # constant between events
    assert s(30) == pytest.approx(0.7) and s(40) == pytest.approx(0.7875)
    assert s(50) == s(70) == 0.8
    assert sparse.cubic_sparsity(0, 0.3, 0.9, 0, 4, 1) == pytest.approx(0.3)
    assert sparse.cubic_sparsity(2, 0.3, 0.9, 0, 4, 1) == pytest.approx(0.9 - 0.6 / 8)


@pytest.mark.parametrize("method", ["gradual", "movement"])
def test_gradual_sparsity_at_each_step_equals_the_formula(method):
    """Gradual magnitude and movement pruning share the cubic schedule; the zeros are exactly the masked weights."""
    model = tiny_model()
    pruner = sparse.build(method, model, SparsityOptions(sparsity=0.8, sparsity_initial=0.1, prune_start=2,
                                                         prune_end=10, prune_every=2))
    pruner.setup()
    expected = {1: 0.0, 2: 0.1, 3: 0.1, 4: 0.8 - 0.7 * 0.75 ** 3, 6: 0.8 - 0.7 * 0.5 ** 3, 8: 0.8 - 0.7 * 0.25 ** 3,
                9: 0.8 - 0.7 * 0.25 ** 3, 10: 0.8, 12: 0.8}

    def check(step, optimizer):
        if step in expected:
            for name, w in pruner.weights.items():
                assert zeros(w) == round(expected[step] * w.numel()), (step, name)
                assert torch.equal(w == 0, ~pruner.masks[name]), (step, name)

    train_steps(model, pruner, 12, 12, record=check)


# ------------------------------------------------------------------ RigL
def test_rigl_update_on_a_hand_made_case():
    w = torch.tensor([[0.9, -0.1, 0.5, 0.2, -0.3, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, True, False, False, False]])
    grad = torch.tensor([[5.0, 0.1, 0.1, 0.1, 0.1, -0.8, 0.05, 0.6]])
    new = sparse.rigl_update(w, grad, mask, 2)
    # drops -0.1 and 0.2 (smallest |w| among active); grows 5 and 7 (largest |grad| among the rest)
    assert new.tolist() == [[True, False, True, False, True, True, False, True]]
    assert int(new.sum()) == int(mask.sum())


def test_rigl_fraction_follows_the_cosine():
    assert sparse.rigl_fraction(0, 0.3, 40) == pytest.approx(0.3)
    assert sparse.rigl_fraction(10, 0.3, 40) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert sparse.rigl_fraction(20, 0.3, 40) == pytest.approx(0.15)
    assert sparse.rigl_fraction(40, 0.3, 40) == pytest.approx(0.0)


def test_rigl_pruner_drops_grows_zeroes_grown_and_keeps_counts():
    layer = torch.nn.Linear(8, 1, bias=False)
    model = torch.nn.Sequential()
    model.add_module("proj", layer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.9, -0.1, 0.5, 0.2, -0.3, 0.05, 0.04, 0.03]]))
    options = SparsityOptions(sparsity=0.375, prune_start=1, prune_end=40, prune_every=10, rigl_fraction=0.6)
    pruner = sparse.build("rigl", model, options)
    pruner.setup()  # keeps the 5 largest |w|: positions 0–4
    assert pruner.masks["proj.weight"].tolist() == [[True] * 5 + [False] * 3]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    layer.weight.grad = torch.tensor([[5.0, 0.1, 0.1, 0.1, 0.1, -0.8, 0.05, 0.6]])
    optimizer.step()  # moments exist for every entry now
    layer.weight.grad = torch.tensor([[5.0, 0.1, 0.1, 0.1, 0.1, -0.8, 0.05, 0.6]])
    before = layer.weight.detach().clone()
    pruner.before_optimizer_step(10, 40, optimizer)  # f = 0.3 · (1 + cos(π/4)) ≈ 0.512 → ⌊0.512 · 5⌋ = 2 swaps
    new = pruner.masks["proj.weight"]
    # the two smallest active |w| after the first step are dropped; positions 5 and 7 grow
    order = before[0, :5].abs().argsort()[:2].tolist()
    expected = [True] * 5 + [True, False, True]
    for i in order:
        expected[i] = False
    assert new.tolist() == [expected] and int(new.sum()) == 5
    assert torch.all(layer.weight[~new] == 0) and layer.weight[0, 5] == 0 and layer.weight[0, 7] == 0
    for value in optimizer.state[layer.weight].values():
        if value.shape == layer.weight.shape:
            assert torch.all(value[~new] == 0) and value[0, 5] == 0 and value[0, 7] == 0
    assert torch.all(layer.weight.grad[~new] == 0)


def test_rigl_keeps_each_layers_nonzeros_constant_while_masks_move():
    model = tiny_model()
    pruner = sparse.build("rigl", model, SparsityOptions(sparsity=0.7, prune_start=2, prune_end=12, prune_every=2))
    pruner.setup()
    first = {n: m.clone() for n, m in pruner.masks.items()}
    counts = {n: int(m.sum()) for n, m in first.items()}

    def check(step, optimizer):
        for name, w in pruner.weights.items():
            assert int(pruner.masks[name].sum()) == counts[name]
            assert w.numel() - zeros(w) <= counts[name]

    train_steps(model, pruner, 12, 12, record=check)
    assert any(not torch.equal(first[n], pruner.masks[n]) for n in first)


# ------------------------------------------------------------------ N:M
def test_two_four_keeps_two_of_every_four_along_the_input_dim():
    model = tiny_model()
    pruner = sparse.build("2:4", model, SparsityOptions())
    pruner.setup()
    train_steps(model, pruner, 3, 3)
    for name, w in pruner.weights.items():
        groups = (w.detach() != 0).reshape(w.shape[0], -1, 4)  # (out, in/4, 4)
        assert torch.all(groups.sum(-1) == 2), name
    w = torch.tensor([[0.1, -0.9, 0.3, 0.2, 5.0, 4.0, -6.0, 0.0]])
    assert sparse.nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, False, True, False]]


# ------------------------------------------------------------------ through the Trainer
def sparse_config(tiny_config, name, **overrides):
    values = dict(max_steps=8, epochs=1, batch_size=16, prune="rigl", sparsity=0.75, prune_start=2, prune_end=7,
                  prune_every=2, output=str(tiny_config().output).replace("run", name), log_every=4)
    values.update(overrides)
    return tiny_config(**values)


@pytest.mark.parametrize("method", ["rigl", "gradual", "movement"])
def test_resume_with_masks_is_bit_exact(tiny_config, method):
    full = Trainer(sparse_config(tiny_config, f"full-{method}", prune=method))
    full.fit()
    cut = Trainer(sparse_config(tiny_config, f"cut-{method}", prune=method))
    cut.fit(stop_at_step=5)
    resumed = Trainer(sparse_config(tiny_config, f"cut-{method}", prune=method, resume=True))
    resumed.fit()
    a, b = dict(full.model.named_parameters()), dict(resumed.model.named_parameters())
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ma, mb = full.techniques[0].pruner.masks, resumed.techniques[0].pruner.masks
    assert ma.keys() == mb.keys() and all(torch.equal(ma[n], mb[n]) for n in ma)


def test_best_is_never_a_model_denser_than_asked(tiny_config):
    """Gradual pruning reaches 75% at step 7 of 8; evaluations every 2 steps. The evaluations at steps 2, 4 and 6 (less
    sparse) may score higher, but best/ — and results' best — come only from step 8, whose masks are at the target."""
    trainer = Trainer(sparse_config(tiny_config, "best", prune="gradual", eval_every=2, save_best=True))
    results = trainer.fit()
    evals = [r for r in trainer.run_dir.metrics() if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]
    assert results["best"]["step"] == 8
    masks = SafetensorsFile(trainer.run_dir.best / "masks.safetensors")
    pruned = sum(int((~masks.tensor(n)).sum()) for n in masks.keys())
    total = sum(masks.tensor(n).numel() for n in masks.keys())
    assert pruned / total == pytest.approx(0.75, abs=1e-3)


def test_pruned_run_exports_hf_layout_with_zeros_and_honest_results(tiny_config, tmp_path):
    config = sparse_config(tiny_config, "export", prune="magnitude", sparsity=0.8, schedule="one-cycle",
                           distill_from=str(tiny_config().model))
    trainer = Trainer(config)
    results = trainer.fit()
    masks = next(t for t in trainer.techniques if t.name == "sparsity").pruner.masks
    trainer.export(tmp_path / "pruned")
    loaded = nanoft.load_model(tmp_path / "pruned", head="classification", num_labels=2)
    params = dict(loaded.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0) and torch.all(params[name][mask] != 0), name
    saved = json.loads((trainer.run_dir / "results.json").read_text())["sparsity"]
    assert saved["method"] == "magnitude" and saved["target"] == 0.8
    total = sum(m.numel() for m in masks.values())
    assert saved["pruned"]["zeros"] == sum(int((~m).sum()) for m in masks.values())
    assert saved["pruned"]["sparsity"] == sum(round(0.8 * m.numel()) for m in masks.values()) / total  # per matrix
    enc = [p for n, p in params.items() if n.startswith("encoder.")]
    assert saved["encoder"]["zeros"] == sum(zeros(p) for p in enc)
    assert saved["encoder"]["sparsity"] < saved["encoder_linear"]["sparsity"] == saved["pruned"]["sparsity"]
    from nanoft.weights.safetensors_io import SafetensorsFile

    f = SafetensorsFile(trainer.run_dir / "masks.safetensors")
    assert set(f.keys()) == set(masks) and all(torch.equal(f.tensor(n), m) for n, m in masks.items())
    assert results["sparsity"] == saved


def test_pruned_model_loads_in_transformers_with_the_same_logits(tiny_config, tmp_path):
    transformers = pytest.importorskip("transformers")
    trainer = Trainer(sparse_config(tiny_config, "hf", prune="2:4", sparsity=None, max_steps=2))
    trainer.fit()
    trainer.export(tmp_path / "pruned")
    ours = nanoft.load_model(tmp_path / "pruned", head="classification", num_labels=2).eval()
    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    w = theirs.bert.encoder.layer[0].attention.self.query.weight
    assert torch.all((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2)
    ids = torch.randint(5, 20, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("overrides, message", [
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
    ({"prune_start": 0.8, "prune_end": 0.5}, r"prune_start \(0.8\) must come before prune_end \(0.5\)"),
    ({"prune": "4:2", "sparsity": None}, r"N:M sparsity needs 0 < N < M, got 4:2"),
    ({"prune": "2:2", "sparsity": None}, r"N:M sparsity needs 0 < N < M"),
    ({"prune": "2:4", "sparsity": 0.8}, r"--prune 2:4 means sparsity 0.5"),
    ({"prune": "gradual", "sparsity": None}, r"--prune gradual needs --sparsity"),
    ({"prune": "rigel"}, r"unknown pruning method 'rigel'"),
    ({"rigl_fraction": 0.0}, r"rigl_fraction must be in \(0, 1\]"),
    ({"sparsity_distribution": "erdos"}, r"sparsity_distribution must be one of"),
    ({"peft": "lora"}, r"--prune cannot be combined with --peft lora"),
    ({"prune": "movement", "sparsity": None}, r"--prune movement needs --sparsity"),
    ({"prune": "keep"}, r"--prune keep takes the sparsity and the pruned tensors from the saved masks, not from "
                        r"--sparsity \(leave --sparsity out\)"),
    ({"prune": "keep", "sparsity": None, "sparsity_targets": ["query"], "sparsity_head": True},
     r"not from --sparsity-targets, --sparsity-head"),
    ({"prune": "gradual", "prune_masks": "runs/x"}, r"--prune-masks applies to --prune keep, not --prune gradual"),
])
def test_bad_sparsity_settings_are_one_line_config_errors(tiny_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        sparse_config(tiny_config, "bad", **overrides).validate()


def test_targets_that_match_no_layer_list_the_names(tiny_config):
    with pytest.raises(ConfigError, match=r"target 'querry' matches no linear layer; available: .*query.*"):
        Trainer(sparse_config(tiny_config, "targets", sparsity_targets=["querry"]))


def test_start_after_end_known_only_from_the_run_length(tiny_config):
    trainer = Trainer(sparse_config(tiny_config, "window", prune="gradual", prune_start=0.5, prune_end=3))
    with pytest.raises(ConfigError, match=r"prune_start \(0.5\) is step 4, not before prune_end \(3\) = step 3"):
        trainer.fit()


def test_targets_choose_the_layers_and_the_head_and_embeddings_are_optional():
    model = tiny_model()
    pruner = sparse.build("magnitude", model, SparsityOptions(sparsity=0.5, sparsity_targets=["query", "*.ffn.*"],
                                                               sparsity_embeddings=True, sparsity_head=True))
    names = set(pruner.weights)
    assert "encoder.layers.0.attention.query.weight" in names and "encoder.layers.1.ffn.output.weight" in names
    assert "encoder.layers.0.attention.key.weight" not in names
    assert "encoder.embeddings.word.weight" in names and "head.out.weight" in names


def test_bench_csr_model_computes_what_the_dense_pruned_model_does():
    from nanoft.bench.sparse import CSRLinear, to_csr

    model = tiny_model().eval()
    pruner = sparse.build("magnitude", model, SparsityOptions(sparsity=0.8))
    pruner.setup()
    csr = to_csr(model, [n[:-len(".weight")] for n in pruner.weights])
    assert sum(isinstance(m, CSRLinear) for m in csr.modules()) == len(pruner.weights)
    ids = torch.randint(5, 40, (3, 7))
    with torch.no_grad():
        torch.testing.assert_close(csr(ids), model(ids), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ movement pruning
def test_movement_prunes_weights_moving_toward_zero_first_even_when_large():
    layer = torch.nn.Linear(4, 1, bias=False)
    model = torch.nn.Sequential()
    model.add_module("proj", layer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, 1.5, 0.3, -0.2]]))
    # 25% at step 1, cubic to 50% at step 3: s(2) = 0.5 − 0.25 · (1/2)³ = 0.46875 → round(1.875) = 2 of 4
    options = SparsityOptions(sparsity=0.5, sparsity_initial=0.25, prune_start=1, prune_end=3, prune_every=1)
    pruner = sparse.build("movement", model, options)
    pruner.setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grad = torch.tensor([[1.0, 0.0, -1.0, 1.0]])  # w0 shrinks toward 0, w1 stays, w2 and w3 grow away from 0
    masks = []
    for step in (1, 2):
        layer.weight.grad = grad.clone()
        pruner.before_optimizer_step(step, 3, optimizer)
        optimizer.step()
        pruner.after_step(step, 3, optimizer)
        masks.append(pruner.masks["proj.weight"].tolist())
    # step 1: S = −w·g = [−2, 0, 0.3, 0.2]; w → [1.9, 1.5, 0.4, −0.3]; one pruned: the largest weight, w0
    assert masks[0] == [[False, True, True, True]]
    # step 2: w0 is 0 (no movement), S += [0, 0, 0.4, 0.3] → [−2, 0, 0.7, 0.5]; two pruned: w0 and w1
    assert masks[1] == [[False, False, True, True]]
    torch.testing.assert_close(pruner.scores["proj.weight"], torch.tensor([[-2.0, 0.0, 0.7, 0.5]]))
    assert layer.weight[0, 0] == 0 and layer.weight[0, 1] == 0
    # magnitude pruning at the same point would have kept exactly the two that movement pruned
    magnitude = sparse.magnitude_masks({"w": torch.tensor([[1.9, 1.5, 0.5, -0.4]])}, 0.5, "uniform")
    assert magnitude["w"].tolist() == [[True, True, False, False]]


# ------------------------------------------------------------------ continued sparse training from saved masks
def test_continued_training_from_saved_masks_keeps_exactly_the_same_zeros(tiny_config):
    first = Trainer(sparse_config(tiny_config, "masks-a", prune="magnitude", sparsity=0.75, max_steps=4))
    first.fit()
    best = first.run_dir.best
    from nanoft.weights.safetensors_io import SafetensorsFile

    f = SafetensorsFile(best / "masks.safetensors")
    saved = {n: f.tensor(n).clone() for n in f.keys()}
    start = dict(nanoft.load_model(best, head="classification", num_labels=2).named_parameters())
    assert saved and all(torch.equal(start[n] == 0, ~m) for n, m in saved.items())  # the masks fit the zeros
    # --prune keep with the exported model as --model: its masks.safetensors, no --sparsity
    second = Trainer(sparse_config(tiny_config, "masks-b", prune="keep", sparsity=None, model=str(best)))
    results = second.fit()
    after = dict(second.model.named_parameters())
    for name, mask in saved.items():
        assert torch.equal(after[name] == 0, ~mask), name  # same zeros: none regrown, none added
        assert torch.all(after[name][mask] != start[name][mask].detach()), name  # the kept weights trained
    assert results["sparsity"]["pruned"]["sparsity"] == sum(round(0.75 * m.numel()) for m in saved.values()) / sum(
        m.numel() for m in saved.values())


def _masks_file(path, tensors):
    from nanoft.weights.safetensors_io import save_file

    save_file(tensors, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("value 2", r"mask 'encoder.layers.0.attention.query.weight' holds values other than 0 and 1"),
    ("nan", r"holds values other than 0 and 1"),
    ("shape", r"mask 'encoder.layers.0.attention.query.weight' has shape \[16, 8\], the model's tensor \[16, 16\]"),
    ("name", r"masks for tensors this model does not have: encoder.layers.9.attention.query.weight"),
    ("pickle", r"not a valid safetensors file|header is not valid JSON"),
    ("empty dir", r"no masks.safetensors in this directory"),
    ("missing", r"masks file or directory not found"),
])
def test_a_bad_masks_file_is_one_clear_line(tmp_path, case, message):
    ok = torch.ones(16, 16, dtype=torch.uint8)
    name = "encoder.layers.0.attention.query.weight"
    path = tmp_path / "masks.safetensors"
    if case == "value 2":
        _masks_file(path, {name: ok * 2})
    elif case == "nan":
        _masks_file(path, {name: torch.full((16, 16), float("nan"))})
    elif case == "shape":
        _masks_file(path, {name: torch.ones(16, 8, dtype=torch.bool)})
    elif case == "name":
        _masks_file(path, {name: ok, "encoder.layers.9.attention.query.weight": ok})
    elif case == "pickle":
        torch.save({name: ok}, path)  # a pickle under the safetensors name is refused, never unpickled
    elif case == "empty dir":
        path = tmp_path
    else:
        path = tmp_path / "nowhere"
    from nanoft.errors import NanoftError

    with pytest.raises(NanoftError, match=message) as e:
        sparse.build("keep", tiny_model(), SparsityOptions(prune_masks=str(path))).setup()
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_bad_masks_through_the_cli_exit_2_with_one_line(tiny_task, tmp_path, monkeypatch, capsys):
    import sys

    from nanoft.cli import main

    bad = _masks_file(tmp_path / "masks.safetensors", {"encoder.layers.0.attention.query.weight": torch.ones(3, 3)})
    monkeypatch.setattr(sys, "argv", [
        "nanoft", "train", "--train-file", str(tiny_task["data"] / "train.tsv"), "--text-column", "text",
        "--label-column", "label", "--model", str(tiny_task["model"]), "--output", str(tmp_path / "run"),
        "--prune", "keep", "--prune-masks", str(bad), "--quiet"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(bad) in err and "has shape [3, 3]" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_pruning_a_model_with_peft_layers_merged_or_not_is_refused():
    from nanoft import peft

    model = tiny_model()
    peft.apply(model, "lora", r=2, alpha=4, targets=["query", "value"])
    with pytest.raises(ConfigError, match="cannot prune a model with PEFT layers in it, merged or not"):
        sparse.build("magnitude", model, SparsityOptions(sparsity=0.5))
    peft.merge(model)
    with pytest.raises(ConfigError, match="cannot prune a model with PEFT layers in it, merged or not"):
        sparse.build("magnitude", model, SparsityOptions(sparsity=0.5))
    peft.merge_and_unload(model)  # a plain model again: pruning it is fine
    sparse.build("magnitude", model, SparsityOptions(sparsity=0.5)).setup()


# ------------------------------------------------------------------ nanoft info
def test_info_counts_sparsity_three_ways_per_block_by_direct_count(tmp_path):
    import re

    from safetensors.torch import load_file

    from nanoft.commands import describe_model
    from nanoft.weights import save_model

    model = tiny_model()
    masks = {}
    with torch.no_grad():
        q = model.encoder.layers[0].attention.query.weight
        q[:, :10] = 0  # 160 of 256 by hand, masked
        masks["encoder.layers.0.attention.query.weight"] = q != 0
        model.encoder.layers[1].ffn.output.weight[0] = 0  # 32 unmasked zeros in a linear weight
        model.encoder.embeddings.word.weight[7] = 0       # 16 zeros in an embedding
        model.encoder.layers[1].ffn_norm.weight[:5] = 0   # 5 in a LayerNorm (biases are zero from init)
    save_model(model, tmp_path)
    _masks_file(tmp_path / "masks.safetensors", masks)
    text = describe_model(str(tmp_path))
    # the reference: zeros counted straight from the saved file with the safetensors package, by HF key names
    tensors = {k: v for k, v in load_file(tmp_path / "model.safetensors").items()
               if not k.startswith(("classifier", "bert.pooler"))}  # `info` loads the encoder only

    def count(keys):
        keys = list(keys)
        return sum(int((tensors[k] == 0).sum()) for k in keys), sum(tensors[k].numel() for k in keys)

    def total(label):
        found = re.search(rf"^  {label} +([\d.]+)%  \(([\d,]+) zeros of ([\d,]+)\)", text, re.M)
        return float(found.group(1)), int(found.group(2).replace(",", "")), int(found.group(3).replace(",", ""))

    def block(label):
        return re.search(rf"^  {label} +(\S+) +(\S+) +(\S+)$", text, re.M).groups()

    pct = lambda z, n: f"{z / n:.2%}"  # noqa: E731
    linear = [k for k in tensors if ".encoder.layer." in k and k.endswith(".weight") and tensors[k].ndim == 2]
    assert len(linear) == 12
    z, n = count(linear)
    assert z == 160 + 32 and total("encoder linears") == (round(100 * z / n, 2), z, n)
    z, n = count(tensors)
    biases = sum(t.numel() for k, t in tensors.items() if k.endswith(".bias"))  # all zero from init
    assert z == 192 + 16 + 16 + 5 + biases  # linears, row 7 and the padding row 0 of the word embeddings, norm
    assert total("all parameters") == (round(100 * z / n, 2), z, n)
    assert total("pruned tensors") == (62.5, 160, 256) and "(1 tensors)" in text
    for i in (0, 1):
        lz, ln = count(k for k in linear if f".layer.{i}." in k)
        az, an = count(k for k in tensors if f".layer.{i}." in k)
        assert block(f"layer {i}") == (pct(lz, ln), pct(az, an), "62.50%" if i == 0 else "-")
    assert block("embeddings") == ("-", pct(*count(k for k in tensors if ".embeddings." in k)), "-")


# ------------------------------------------------------------------ the prepared experiment
def test_sparse_sst2_experiment_plans_valid_runs_with_the_dense_teacher_first():
    from pathlib import Path

    from nanoft.experiment import plan

    path = Path(__file__).resolve().parents[1] / "experiments" / "sparse-sst2.toml"
    _, runs = plan(str(path))
    names = ["dense", "gradual80", "gradual80_kd", "rigl80", "rigl80_kd", "rigl80_kd_onecycle", "magnitude80",
             "magnitude80_kd", "movement80", "movement80_kd", "gradual50", "gradual90", "gradual90_kd"]
    assert [r["name"] for r in runs] == [f"sst2/{n}" for n in names for _ in (1, 2, 3)]
    teacher = next(r for r in runs if r["name"] == "sst2/dense" and r["seed"] == 1)
    for i, r in enumerate(runs):
        c = r["config"].validate()
        assert c.task == "sst2" and c.train_subset == 4000 and c.seed == r["seed"]
        if r["name"] == "sst2/dense":
            assert c.prune is None and c.distill_from is None
            continue
        method, percent = re.match(r"sst2/([a-z]+)(\d+)", r["name"]).groups()
        assert c.sparsity == int(percent) / 100 and c.prune == method and not c.sparsity_targets
        assert (c.distill_from is not None) == ("_kd" in r["name"])
        if c.distill_from is not None:  # the teacher is the dense seed-1 run, planned (and so run) before this one
            assert Path(c.distill_from) == teacher["output"] and runs.index(teacher) < i
    assert sum(r["config"].distill_from is not None for r in runs) == 6 * 3
    assert {r["config"].schedule for r in runs} == {"linear", "one-cycle"}
