"""Efficient attention put into pretrained checkpoints: weights reused, new parameters
initialised, positions extended; a converted model that sees everything equals the original."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import nanoft
from nanoft.train import Trainer
from nanoft.weights.safetensors_io import SafetensorsFile


@pytest.mark.slow
@pytest.mark.parametrize("kind,options", [("longformer", {"window": 600}),
                                          ("bigbird", {"block_size": 16, "num_global_blocks": 64})])
def test_converted_minilm_with_full_view_equals_original(kind, options, minilm_dir, data_dir):
    sentences = [l.split("\t")[0] for l in (data_dir / "sst2" / "dev.tsv").read_text().splitlines()[1:9]]
    tok = nanoft.load_tokenizer(minilm_dir)
    ids, _ = tok.encode_batch(sentences, max_length=128)
    T = max(map(len, ids))
    input_ids = torch.tensor([r + [0] * (T - len(r)) for r in ids])
    mask = (input_ids != 0).long()
    original = nanoft.load_model(minilm_dir, head=None)
    converted, report = nanoft.load_model(minilm_dir, head=None, attention=kind, attention_options=options,
                                          max_length=1024, return_report=True)
    assert report.extended_positions == (512, 1024)
    assert type(converted.encoder.layers[0].attention.core).__name__.lower().startswith(kind)
    with torch.no_grad():
        real = mask.bool()
        assert_close(converted(input_ids, mask)[real], original(input_ids, mask)[real], atol=1e-5, rtol=1e-5)
    # the pretrained projections were reused, not re-initialised
    assert torch.equal(converted.encoder.layers[3].attention.query.weight, original.encoder.layers[3].attention.query.weight)


@pytest.mark.parametrize("kind", ["linformer", "performer", "longformer", "bigbird"])
def test_train_save_resume_with_efficient_attention(kind, tiny_config, tmp_path):
    options = {"linformer": {"k": 16}, "performer": {"num_features": 16, "redraw_interval": 2},
               "longformer": {"window": 4}, "bigbird": {"block_size": 4, "num_random_blocks": 1}}[kind]
    full = Trainer(tiny_config(attention=kind, attention_options=options, max_steps=6, output=str(tmp_path / "a")))
    full.fit()
    cut = Trainer(tiny_config(attention=kind, attention_options=options, max_steps=6, output=str(tmp_path / "b")))
    cut.fit(stop_at_step=3)
    resumed = Trainer(tiny_config(attention=kind, attention_options=options, max_steps=6, output=str(tmp_path / "b"),
                                  resume=True))
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # attention parameters/buffers are in the checkpoint and load back into an equal model
    saved = SafetensorsFile(tmp_path / "a" / "checkpoint" / "model.safetensors")
    expected = {f"nanoft.{k}" for k in full.model.state_dict() if ".core." in k}
    assert expected == {k for k in saved.keys() if ".core." in k}
    assert expected or kind == "longformer"  # longformer alone has no tensors of its own
    reloaded = nanoft.load_model(tmp_path / "a" / "checkpoint")
    assert reloaded.config.attention == kind
    ids = torch.randint(5, 25, (2, 12))
    full.model.eval()
    with torch.no_grad():
        assert_close(reloaded(ids), full.model(ids), atol=1e-5, rtol=1e-5)


def test_lora_with_longformer_trains(tiny_config, tiny_task, tmp_path):
    """LoRA on a Longformer-converted model trains (its logits move), and its adapter (saved here, and the
    run's best/ export), loaded into a fresh base model with the same attention, gives the trained model's
    logits and hidden states to 1e-5."""
    from nanoft import peft

    attention = dict(attention="longformer", attention_options={"window": 4})
    trainer = Trainer(tiny_config(**attention, peft="lora", peft_options={"r": 4, "alpha": 8}, max_steps=4))
    results = trainer.fit()
    assert results["trainable_parameters"] < results["parameters"] / 2
    assert (trainer.run_dir / "best" / "adapter" / "adapter.safetensors").is_file()

    def fresh_base():
        return nanoft.load_model(tiny_task["model"], head="classification", num_labels=2, max_length=32,
                                 **attention).eval()

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 25, (3, 20), generator=g)  # 20 tokens: a window of 4 leaves most keys out
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    ids[mask == 0] = 0
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(ids, attention_mask=mask)
        expected_hidden = trained.encoder(ids, mask)  # (batch, seq, hidden): every position, not just [CLS]
        before = fresh_base()(ids, attention_mask=mask)
    assert (expected - before).abs().max() > 1e-3  # training changed the logits

    peft.save_adapter(trained, tmp_path / "adapter")
    # one evaluation, at the end: the run's own best/ export holds these weights too
    assert results["best"]["step"] == results["steps"] == 4
    for directory in (tmp_path / "adapter", trainer.run_dir / "best" / "adapter"):
        reloaded = peft.load_adapter(fresh_base(), directory).eval()
        core = reloaded.encoder.layers[0].attention.core
        assert type(core).__name__.lower().startswith("longformer")
        with torch.no_grad():
            assert_close(reloaded(ids, attention_mask=mask), expected, atol=1e-5, rtol=1e-5)
            assert_close(reloaded.encoder(ids, mask), expected_hidden, atol=1e-5, rtol=1e-5)
    # The hidden states see the attention kind: the same adapter on a full-attention base gives others.
    # (The logits hardly do: [CLS] is a global token, and this tiny model's attention is nearly uniform.)
    full = nanoft.load_model(tiny_task["model"], head="classification", num_labels=2, max_length=32).eval()
    with torch.no_grad():
        other = peft.load_adapter(full, tmp_path / "adapter").encoder(ids, mask)
    assert (other - expected_hidden).abs().max() > 1e-3
