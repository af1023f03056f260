"""Attention transfer: a converted kind's own parameters learn to reproduce the checkpoint's exact attention."""
from __future__ import annotations

import json

import pytest
import torch

import nanoft
from nanoft.errors import ConfigError
from nanoft.train import Trainer
from nanoft.train.transfer import _TeacherForced, attention_transfer, length_sorted_batches


def batches_of(model_dir, texts, max_length=32):
    tokenizer = nanoft.load_tokenizer(str(model_dir))
    ids, _ = tokenizer.encode_batch(texts, max_length=max_length)
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return {"input_ids": input_ids, "attention_mask": mask}


TRAIN = ["good fine nice day table chair lamp window", "bad awful poor lamp window door table",
         "nice table chair lamp day", "poor day door window chair fine good"]
HELD_OUT = ["chair lamp good day window table", "awful door poor nice table lamp chair window"]


def converted(model_dir, k=4):
    return nanoft.load_model(str(model_dir), head=None, attention="linformer", attention_options={"k": k},
                             max_length=32, unpad=False)


def relative_error(model_dir, model, batch):
    """Last hidden state vs the checkpoint with full attention, over real tokens: an independent reference."""
    reference = nanoft.load_model(str(model_dir), head=None, unpad=False).eval()
    with torch.no_grad():
        exact = reference(batch["input_ids"], attention_mask=batch["attention_mask"])
        got = model.eval()(batch["input_ids"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"][..., None].float()
    return float((((got - exact) * real) ** 2).sum().sqrt() / ((exact * real) ** 2).sum().sqrt())


def test_teacher_forcing_runs_the_exact_attention(tiny_task):
    """With every core wrapped, the forward pass is the checkpoint's own (full attention) to 1e-5."""
    model = converted(tiny_task["model_nodrop"]).eval()
    batch = batches_of(tiny_task["model_nodrop"], TRAIN)
    for layer in model.encoder.layers:
        layer.attention.core = _TeacherForced(layer.attention.core)
    assert relative_error(tiny_task["model_nodrop"], model, batch) < 1e-5
    assert all(len(layer.attention.core.errors) == 1 for layer in model.encoder.layers)


def test_transfer_lowers_held_out_error_and_changes_only_the_kinds_parameters(tiny_task):
    model = converted(tiny_task["model_nodrop"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = batches_of(tiny_task["model_nodrop"], TRAIN)
    held_out = batches_of(tiny_task["model_nodrop"], HELD_OUT)
    error_before = relative_error(tiny_task["model_nodrop"], model, held_out)
    report = attention_transfer(model, iter([train] * 60), steps=60, lr=1e-2, probe=[held_out])
    assert report["steps"] == 60 and report["error_last_batch"] < 0.5 * report["error_first_batch"]
    assert report["error_after"] < report["error_before"]
    assert relative_error(tiny_task["model_nodrop"], model, held_out) < 0.7 * error_before
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[-1] in ("proj_k", "proj_v") for k in changed)
    assert all(p.grad is None for p in model.parameters())  # nothing carried into fine-tuning's first step


def test_transfer_restores_trainability_and_cores_even_when_it_fails(tiny_task):
    model = converted(tiny_task["model_nodrop"])
    model.encoder.embeddings.word.weight.requires_grad_(False)  # frozen before: stays frozen
    cores = [layer.attention.core for layer in model.encoder.layers]
    batch = batches_of(tiny_task["model_nodrop"], TRAIN)

    def broken(b):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        attention_transfer(model, iter([batch]), steps=1, lr=1e-2, forward=broken)
    assert [layer.attention.core for layer in model.encoder.layers] == cores
    assert not model.encoder.embeddings.word.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "encoder.embeddings.word.weight")
    attention_transfer(model, iter([batch]), steps=1, lr=1e-2)
    assert not model.encoder.embeddings.word.weight.requires_grad


def test_transfer_needs_a_kind_with_parameters(tiny_task):
    performer = nanoft.load_model(str(tiny_task["model_nodrop"]), head=None, attention="performer", max_length=32)
    with pytest.raises(ConfigError, match="PerformerAttention has no parameters of its own"):
        attention_transfer(performer, iter([]), steps=1, lr=1e-3)
    assert list(length_sorted_batches([], batch_size=4, seed=0)) == []  # no data: no endless loop


def test_length_sorted_batches_cover_every_example_once_per_pass():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11]
    stream = length_sorted_batches(lengths, batch_size=3, seed=0)
    first_pass = [next(stream) for _ in range(4)]  # 11 examples in batches of 3: 3 + 3 + 3 + 2
    assert sorted(i for b in first_pass for i in b) == list(range(11))
    assert all(lengths[b[j]] <= lengths[b[j + 1]] for b in first_pass for j in range(len(b) - 1))
    assert [next(length_sorted_batches(lengths, 3, 0)) for _ in range(1)] == first_pass[:1]  # seeded


def test_trainer_transfer_runs_once_reports_and_resumes_exactly(tiny_config, tmp_path):
    opts = dict(attention="linformer", attention_options={"k": 4}, attention_transfer_steps=5,
                attention_transfer_lr=1e-2, model=tiny_config().model.replace("model", "model_nodrop"), epochs=2)
    full = Trainer(tiny_config(output=str(tmp_path / "full"), **opts))
    full.fit()
    report = json.loads((tmp_path / "full" / "results.json").read_text())["attention_transfer"]
    assert report["steps"] == 5 and report["lr"] == 1e-2 and report["probe_batches"] == 4  # 32 dev / 8
    assert report["error_after"] < report["error_before"]
    cut = Trainer(tiny_config(output=str(tmp_path / "cut"), **opts))
    assert cut.fit(stop_at_step=3) == {"stopped_at": 3}
    resumed = Trainer(tiny_config(output=str(tmp_path / "cut"), resume=True, **opts))
    resumed.fit()  # no second transfer: the checkpoint holds the transferred projections
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed_report = json.loads((tmp_path / "cut" / "results.json").read_text())["attention_transfer"]
    # both report the transfer's seconds; a wall-clock figure, so neither its value nor the two are compared
    assert all(isinstance(r.pop("seconds"), float) for r in (resumed_report, report))
    assert resumed_report == report  # the same transfer, kept through the checkpoint


def test_transfer_config_errors(tiny_config):
    with pytest.raises(ConfigError, match="attention_transfer_steps needs --attention"):
        tiny_config(attention_transfer_steps=5).validate()
    with pytest.raises(ConfigError, match="attention_transfer_steps with --peft is not supported"):
        tiny_config(attention_transfer_steps=5, attention="linformer", peft="lora").validate()
    with pytest.raises(ConfigError, match="PerformerAttention"):
        Trainer(tiny_config(attention="performer", attention_transfer_steps=5))
