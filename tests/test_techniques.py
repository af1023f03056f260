"""Fine-tuning techniques: parameter groups / LLRD, gradual unfreezing, re-init, R-Drop, SWA,
distillation — each against its formula, against the baseline where it must be a no-op, and on
bad input. Runs use a 3-layer tiny BERT on the conftest's tiny task, a few steps each."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import nanoft
from nanoft.errors import ConfigError
from nanoft.models import EncoderModel
from nanoft.train import Technique, Trainer, TrainConfig
from nanoft.train.optim import layer_depth, layer_rates, param_groups
from nanoft.train.techniques.distill import CACHE, distillation_kl, distillation_loss
from nanoft.train.techniques.rdrop import RDrop, rdrop_loss, symmetric_kl
from nanoft.train.techniques.swa import SWA

LAYERS = 3


def _save_tiny(directory, vocab_file, dropout=0.1, num_labels=2, label_names=None, seed=0):
    config = nanoft.ModelConfig(family="bert", vocab_size=100, hidden_size=32, num_layers=LAYERS, num_heads=4,
                                intermediate_size=64, max_position_embeddings=64, hidden_dropout=dropout,
                                attention_dropout=dropout)
    torch.manual_seed(seed)
    model = EncoderModel(config, head="classification", num_labels=num_labels).init_weights()
    with torch.no_grad():  # "pretrained": non-trivial biases and LayerNorm, so re-init visibly changes them
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    nanoft.save_model(model, directory, label_names=label_names)
    shutil.copy(vocab_file, directory / "vocab.txt")
    return directory


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Hidden size 32 gains nothing from threads; on a shared 2-core machine they only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tiny_task, tmp_path_factory):
    """3-layer tiny BERTs reading the tiny task's vocabulary: with dropout 0.1 and without."""
    root = tmp_path_factory.mktemp("techniques")
    vocab = tiny_task["model"] / "vocab.txt"
    return {"drop": _save_tiny(root / "drop", vocab, 0.1), "nodrop": _save_tiny(root / "nodrop", vocab, 0.0),
            "root": root, "vocab": vocab}


@pytest.fixture
def config(tiny_task, models, tmp_path):
    def make(name="run", model="drop", **overrides):
        values = dict(train_file=str(tiny_task["data"] / "train.tsv"), dev_file=str(tiny_task["data"] / "dev.tsv"),
                      text_columns=["text"], label_column="label", model=str(models[model]), batch_size=16,
                      max_steps=6, lr=1e-3, max_length=32, output=str(tmp_path / name), quiet=True, seed=0,
                      eval_batch_size=64)
        values.update(overrides)
        return TrainConfig(**values)

    return make


def weights(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.fixture(scope="module")
def baseline(tiny_task, models, tmp_path_factory):
    """Final weights of a plain 6-step run on each model (dropout / no dropout), for the no-op comparisons."""
    out = {}
    for model in ("drop", "nodrop"):
        cfg = TrainConfig(train_file=str(tiny_task["data"] / "train.tsv"), dev_file=str(tiny_task["data"] / "dev.tsv"),
                          text_columns=["text"], label_column="label", model=str(models[model]), batch_size=16,
                          max_steps=6, lr=1e-3, max_length=32, quiet=True, seed=0, eval_batch_size=64,
                          output=str(tmp_path_factory.mktemp("base") / model))
        trainer = Trainer(cfg)
        trainer.fit()
        out[model] = weights(trainer.model)
    return out


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


class Spy(Technique):
    """Records, per step: the trainable names when the loss is formed, the weights after the step,
    the names given a gradient, and the names holding optimizer state."""

    def __init__(self, trainer):
        self.trainable, self.after, self.graded, self.stateful = {}, {}, {}, {}
        self.trainer = trainer
        for name, p in trainer.model.named_parameters():
            if not p.requires_grad:  # frozen by PEFT for the whole run
                continue
            p.register_post_accumulate_grad_hook(
                lambda p, name=name: self.graded.setdefault(self.trainer.step + 1, set()).add(name))

    def loss(self, trainer, batch, logits, loss):
        self.trainable[trainer.step + 1] = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss

    def after_step(self, trainer):
        self.after[trainer.step] = weights(trainer.model)
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        self.stateful[trainer.step] = {names[id(p)] for p, s in trainer.optimizer.state.items() if s}


# ------------------------------------------------------------------ parameter groups and LLRD
def test_param_groups_partition_and_llrd_rates(config):
    trainer = Trainer(config(layerwise_lr_decay=0.8, lr=1e-3))
    model = trainer.model
    seen = [id(p) for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))  # each parameter in exactly one group
    top = LAYERS + 1
    for group in trainer.optimizer.param_groups:
        depth = group["depth"]
        assert group["base_lr"] == 1e-3 * 0.8 ** (top - depth)  # exact: the same float expression
        for name in group["names"]:
            expected = 0 if name.startswith("encoder.embeddings.") else (
                int(name.split(".")[2]) + 1 if name.startswith("encoder.layers.") else top)
            assert layer_depth(name, LAYERS) == expected == depth, name
    rates = layer_rates(1.0, LAYERS, 0.5)
    assert rates == [0.0625, 0.125, 0.25, 0.5, 1.0]  # embeddings … head, powers of two: exact
    explicit = param_groups(model, 1.0, layer_lrs=[1, 2, 3, 4, 5])
    assert {g["depth"]: g["lr"] for g in explicit} == {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0}
    # no decay for biases and LayerNorm weights
    for g in explicit:
        for name, p in zip(g["names"], g["params"]):
            assert (g["weight_decay"] == 0.0) == (p.ndim < 2 or "norm" in name)


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_llrd_decay_outside_unit_interval_is_config_error(config, decay):
    with pytest.raises(ConfigError, match=r"layerwise_lr_decay must be in \(0, 1\]"):
        config(layerwise_lr_decay=decay).validate()
    with pytest.raises(ConfigError, match=r"layerwise_lr_decay must be in \(0, 1\]"):
        layer_rates(1e-3, LAYERS, decay)


# ------------------------------------------------------------------ gradual unfreezing
def test_gradual_unfreezing_freezes_then_thaws_top_down(config, models):
    trainer = Trainer(config(unfreeze_every=2, max_steps=10, weight_decay=0.1))
    spy = Spy(trainer)
    trainer.techniques.append(spy)
    start = weights(trainer.model)
    trainer.fit()
    names = list(start)
    for step in range(1, 11):
        lowest = max(0, LAYERS + 1 - (step - 1) // 2)  # steps 1–2 head only, 3–4 + layer 2, … 9–10 all
        expected = {n for n in names if layer_depth(n, LAYERS) >= lowest}
        assert spy.trainable[step] == expected, step
        assert spy.graded[step] == expected, step  # frozen parameters get no gradient
        assert spy.stateful[step] == expected, step  # … and no AdamW state (nor weight decay)
    # a frozen parameter keeps its checkpoint value until its block thaws
    emb = [n for n in names if n.startswith("encoder.embeddings.")]
    low = [n for n in names if n.startswith("encoder.layers.0.")]
    for n in emb:
        assert torch.equal(spy.after[8][n], start[n]) and not torch.equal(spy.after[10][n], start[n]), n
    for n in low:
        assert torch.equal(spy.after[6][n], start[n]), n
    assert any(not torch.equal(spy.after[8][n], start[n]) for n in low)


def test_gradual_unfreezing_with_lora_thaws_only_adapters(config):
    trainer = Trainer(config(unfreeze_every=1, max_steps=3, peft="lora", peft_options={"r": 2}))
    spy = Spy(trainer)
    trainer.techniques.append(spy)
    trainer.fit()
    for step in (1, 2, 3):
        names = spy.trainable[step]
        lowest = LAYERS + 1 - (step - 1)
        assert names and all(layer_depth(n, LAYERS) >= lowest for n in names)
        assert all(n.startswith("head.") or "lora" in n for n in names), names
    assert any(n.startswith("encoder.layers.2.") for n in spy.trainable[2])
    assert not any(n.startswith("encoder.layers.1.") for n in spy.trainable[2])


# ------------------------------------------------------------------ re-init
def test_reinit_changes_exactly_the_top_k_layers_and_pooler(config, models):
    checkpoint = weights(nanoft.load_model(models["drop"], head="classification", num_labels=2))
    trainer = Trainer(config(reinit_layers=2, seed=7))
    after = weights(trainer.model)
    top = ("encoder.layers.1.", "encoder.layers.2.", "head.dense.")
    for name, before in checkpoint.items():
        if name.startswith(top):
            assert not torch.equal(after[name], before), name
        else:
            assert torch.equal(after[name], before), name  # bit-identical
    # BERT's init: N(0, 0.02) weights, zero biases, unit LayerNorm
    for name, p in after.items():
        if not name.startswith(top):
            continue
        if "norm" in name and name.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert abs(p.std().item() - 0.02) < 0.004 and abs(p.mean().item()) < 0.004, name
    # seeded: the same seed gives the same fresh layers
    again = weights(Trainer(config("again", reinit_layers=2, seed=7)).model)
    assert_same(after, again)


def test_reinit_more_layers_than_the_model_has_is_config_error(config):
    bad = config(reinit_layers=4)
    with pytest.raises(ConfigError, match="reinit_layers=4 but the model has only 3 encoder layers"):
        Trainer(bad)
    assert not Path(bad.output).exists()  # a run that fails in set-up leaves no folder behind


# ------------------------------------------------------------------ R-Drop
def _fixed_logits():
    g = torch.Generator().manual_seed(3)
    return torch.randn(5, 3, generator=g) * 2, torch.randn(5, 3, generator=g) * 2, torch.tensor([0, 2, 1, 1, 0])


def test_rdrop_loss_equals_formula():
    z1, z2, y = _fixed_logits()
    p1 = np.exp(z1.double().numpy()) / np.exp(z1.double().numpy()).sum(-1, keepdims=True)
    p2 = np.exp(z2.double().numpy()) / np.exp(z2.double().numpy()).sum(-1, keepdims=True)
    rows = np.arange(5)
    ce = 0.5 * (-np.log(p1[rows, y.numpy()]).mean() - np.log(p2[rows, y.numpy()]).mean())
    kl12 = (p1 * np.log(p1 / p2)).sum(-1)
    kl21 = (p2 * np.log(p2 / p1)).sum(-1)
    alpha = 0.7
    expected = ce + alpha * 0.5 * (kl12 + kl21).mean()
    assert rdrop_loss(z1, z2, y, alpha).item() == pytest.approx(expected, rel=1e-6)
    assert symmetric_kl(z1, z1).item() == 0.0
    # the hook: the trainer's first-pass CE plus a second pass from trainer.forward
    fake = type("T", (), {})()
    fake.dist = type("D", (), {"enabled": False})()
    fake.task = type("K", (), {"is_regression": False})()
    fake.forward = lambda batch, model=None: z2
    first = torch.nn.functional.cross_entropy(z1, y)
    hooked = RDrop(alpha).loss(fake, {"labels": y}, z1, first)
    assert hooked.item() == pytest.approx(expected, rel=1e-6)


def test_rdrop_regression_uses_squared_difference():
    y1, y2 = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.0, -0.5, 2.5])
    target = torch.tensor([1.0, 0.0, 2.0])
    mse1, mse2 = ((y1 - target) ** 2).mean(), ((y2 - target) ** 2).mean()
    expected = 0.5 * (mse1 + mse2) + 2.0 * ((y1 - y2) ** 2).mean()
    assert rdrop_loss(y1, y2, target, 2.0, is_regression=True).item() == pytest.approx(expected.item(), rel=1e-6)


def test_rdrop_alpha_zero_is_baseline_and_active_rdrop_is_not(config, baseline):
    trainer = Trainer(config(rdrop_alpha=0.0))
    assert trainer.techniques == []  # no second pass
    trainer.fit()
    assert_same(weights(trainer.model), baseline["drop"])
    active = Trainer(config("active", rdrop_alpha=1.0))
    active.fit()
    assert any(not torch.equal(v, baseline["drop"][k]) for k, v in weights(active.model).items())


def test_rdrop_without_dropout_reduces_to_plain_training(config, baseline):
    """With dropout off both passes agree, the KL term is 0 and ½(CE + CE) = CE: baseline weights to 1e-6."""
    trainer = Trainer(config(model="nodrop", rdrop_alpha=1.0))
    trainer.fit()
    assert_same(weights(trainer.model), baseline["nodrop"], atol=1e-6)


# ------------------------------------------------------------------ SWA
def test_swa_average_is_the_mean_of_snapshots_and_is_exported(config):
    trainer = Trainer(config(swa_start=3, swa_every=2, max_steps=8))
    spy = Spy(trainer)
    trainer.techniques.append(spy)
    results = trainer.fit()
    swa = next(t for t in trainer.techniques if isinstance(t, SWA))
    assert swa.count == 3  # steps 3, 5, 7
    for name, avg in swa.average.items():
        mean = torch.stack([spy.after[s][name] for s in (3, 5, 7)]).mean(0)
        torch.testing.assert_close(avg, mean, rtol=0, atol=1e-6, msg=name)
    assert_same(weights(trainer.model), spy.after[8])  # evaluation swapped the weights back
    exported = nanoft.load_model(trainer.run_dir / "swa", head="classification", num_labels=2)
    for name, p in exported.named_parameters():
        torch.testing.assert_close(p, swa.average[name], rtol=0, atol=1e-7)
    saved = json.loads((trainer.run_dir / "results.json").read_text())
    assert saved["swa"] == results["swa"]
    assert set(saved["swa"]) == set(results["best"]["metrics"]["dev"]) - {"loss"} == {"accuracy", "f1"}
    assert saved["swa_info"]["snapshots"] == 3 and saved["swa_info"]["start_step"] == 3


def test_swa_resume_restores_the_running_average(config):
    full = Trainer(config("full", swa_start=0.25, max_steps=8))
    full.fit()
    cut = Trainer(config("cut", swa_start=0.25, max_steps=8))
    cut.fit(stop_at_step=4)
    resumed = Trainer(config("cut", swa_start=0.25, max_steps=8, resume=True))
    resumed.fit()
    a = next(t for t in full.techniques if isinstance(t, SWA))
    b = next(t for t in resumed.techniques if isinstance(t, SWA))
    assert a.count == b.count == 7  # ceil(0.25 · 8) = step 2 … 8
    assert_same(a.average, b.average)


def test_swa_start_after_the_last_step_is_config_error(config):
    with pytest.raises(ConfigError, match=r"swa_start=10 is step 10, after the last step \(6\)"):
        Trainer(config(swa_start=10))
    trainer = Trainer(config("epochs", swa_start=1000, max_steps=None, epochs=1))  # steps known only later
    with pytest.raises(ConfigError, match=r"after the last step \(6\)"):
        trainer.fit()


@pytest.mark.parametrize("overrides, message", [
    ({"swa_start": 0.0}, "swa_start must be > 0"),
    ({"swa_start": 0.5, "swa_every": 0}, "swa_every must be ≥ 1"),
    ({"unfreeze_every": 0}, "unfreeze_every must be ≥ 1"),
    ({"child_tuning_p": 0.0}, r"child_tuning_p must be in \(0, 1\]"),
    ({"child_tuning_p": 1.5}, r"child_tuning_p must be in \(0, 1\]"),
])
def test_bad_technique_settings_are_config_errors(config, overrides, message):
    from nanoft.train.techniques import build_techniques

    with pytest.raises(ConfigError, match=message):
        build_techniques(config(**overrides))


# ------------------------------------------------------------------ Child-Tuning-F
class GradRecorder(Technique):
    """Clones every gradient just before the optimizer step (where it sits in the technique list decides
    whether it sees the gradients before or after Child-Tuning's mask)."""

    def __init__(self):
        self.grads = {}

    def before_optimizer_step(self, trainer):
        self.grads[trainer.step + 1] = {n: p.grad.clone() for n, p in trainer.model.named_parameters()
                                        if p.grad is not None}


def test_child_tuning_masks_gradients_by_the_formula(config):
    from nanoft.train.techniques.childtune import child_mask

    p = 0.3
    trainer = Trainer(config(child_tuning_p=p, max_steps=2))
    before, after = GradRecorder(), GradRecorder()
    trainer.techniques = [before, *trainer.techniques, after]
    trainer.fit()
    params = [n for n, q in trainer.model.named_parameters() if q.requires_grad]
    for step in (1, 2):
        for index, name in enumerate(params):
            g, masked = before.grads[step][name], after.grads[step][name]
            keep = child_mask(g.shape, p, seed=0, step=step - 1, index=index, device=g.device)
            torch.testing.assert_close(masked, g * keep / p, rtol=0, atol=0, msg=name)
    weight = "encoder.layers.0.ffn.intermediate.weight"
    kept = child_mask(before.grads[1][weight].shape, p, 0, 0, params.index(weight), torch.device("cpu"))
    assert abs(kept.float().mean().item() - p) < 0.03  # 2,048 Bernoulli(0.3) draws
    assert not torch.equal(kept, child_mask(kept.shape, p, 0, 1, params.index(weight), torch.device("cpu")))


def test_child_tuning_p_one_is_baseline_and_resume_draws_the_same_masks(config, baseline):
    trainer = Trainer(config(child_tuning_p=1.0))
    trainer.fit()
    assert_same(weights(trainer.model), baseline["drop"])
    full = Trainer(config("full", child_tuning_p=0.5))
    full.fit()
    assert any(not torch.equal(v, baseline["drop"][k]) for k, v in weights(full.model).items())
    Trainer(config("cut", child_tuning_p=0.5)).fit(stop_at_step=3)
    resumed = Trainer(config("cut", child_tuning_p=0.5, resume=True))
    resumed.fit()
    assert_same(weights(resumed.model), weights(full.model))


# ------------------------------------------------------------------ knowledge distillation
def test_distillation_loss_equals_formula():
    s, t, y = _fixed_logits()
    T, alpha = 2.5, 0.3
    ps = np.exp(s.double().numpy() / T)
    ps /= ps.sum(-1, keepdims=True)
    pt = np.exp(t.double().numpy() / T)
    pt /= pt.sum(-1, keepdims=True)
    kl = (pt * np.log(pt / ps)).sum(-1).mean()
    hard = torch.nn.functional.cross_entropy(s, y)
    expected = (1 - alpha) * hard.item() + alpha * T * T * kl
    assert distillation_loss(hard, s, t, alpha, T).item() == pytest.approx(expected, rel=1e-6)
    assert distillation_kl(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-6)
    assert torch.equal(distillation_loss(hard, s, t, 0.0, T), hard)  # α = 0: the hard loss, exactly


def test_distillation_alpha_zero_is_baseline(config, models, baseline):
    trainer = Trainer(config(distill_from=str(models["drop"]), distill_alpha=0.0))
    trainer.fit()
    assert_same(weights(trainer.model), baseline["drop"])
    assert not (trainer.run_dir / CACHE).exists()  # no teacher pass at α = 0


def test_distillation_from_a_run_caches_teacher_logits(config, models, baseline, tmp_path):
    teacher_run = Trainer(config("teacher", max_steps=4))
    teacher_run.fit()
    student = Trainer(config("student", model="nodrop", distill_from=str(teacher_run.run_dir),
                             distill_alpha=0.5, max_steps=3))
    results = student.fit()
    assert results["distill"]["teacher"] == str(teacher_run.run_dir / "best")
    cached = np.load(student.run_dir / CACHE)
    from nanoft.train.evaluate import predict_logits

    teacher = nanoft.load_model(teacher_run.run_dir / "best", head="classification", num_labels=2)
    expected = predict_logits(teacher, student.train_data, student.tokenizer.pad_token_id, 64,
                              precision=student.precision)
    assert cached.shape == (96, 2)
    np.testing.assert_allclose(cached, expected.numpy(), rtol=0, atol=1e-6)


def test_teacher_with_a_different_label_set_is_config_error(config, models):
    three = _save_tiny(models["root"] / "three", models["vocab"], num_labels=3)
    with pytest.raises(ConfigError, match=r"teacher labels \[LABEL_0, LABEL_1, LABEL_2\] differ from the task's"):
        Trainer(config(distill_from=str(three)))
    named = _save_tiny(models["root"] / "named", models["vocab"], label_names=["neg", "pos"])
    with pytest.raises(ConfigError, match=r"teacher labels \[neg, pos\] differ from the task's \[0, 1\]"):
        Trainer(config("named", distill_from=str(named)))
    with pytest.raises(ConfigError, match="no teacher model found"):
        Trainer(config("missing", distill_from=str(models["root"] / "nowhere")))
    one = _save_tiny(models["root"] / "one", models["vocab"], num_labels=1)  # a regression teacher
    with pytest.raises(ConfigError, match=r"the teacher is a regression model \(one output\), not a classifier"):
        Trainer(config("one", distill_from=str(one)))


# ------------------------------------------------------------------ all together
def test_all_techniques_compose_with_each_other_and_lora(config, models):
    trainer = Trainer(config(layerwise_lr_decay=0.9, reinit_layers=1, rdrop_alpha=0.5, swa_start=0.5,
                             unfreeze_every=1, distill_from=str(models["nodrop"]), distill_alpha=0.5,
                             child_tuning_p=0.5, peft="lora", peft_options={"r": 2}, max_steps=4))
    assert [t.name for t in trainer.techniques] == ["reinit", "unfreeze", "rdrop", "distill", "swa", "child_tuning"]
    results = trainer.fit()
    assert math.isfinite(results["best"]["score"])
    assert "accuracy" in results["swa"] and results["swa_info"]["snapshots"] == 3
    assert (trainer.run_dir / "swa" / "adapter").is_dir()  # the PEFT export path
