"""A new attention kind from outside the package: one class and one `register` call, after which it is
built by name, validated like the built-in kinds, loaded into a checkpoint and trained by the Trainer."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, List, Optional

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import nanoft
from nanoft import attention
from nanoft.attention import AttentionCore
from nanoft.errors import ConfigError
from nanoft.train import Trainer


@dataclass
class ToyOptions:
    temperature: float = field(default=1.0, metadata={"help": "divides the scores (1: plain softmax attention)"})


class ToyAttention(AttentionCore):
    """Softmax attention written out in plain torch, recording whether each call was in training mode."""

    Options = ToyOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: List[bool] = []

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_inputs(q, k, v, key_padding_mask)
        self.calls.append(self.training)
        scores = (q @ k.transpose(-2, -1)) * self.scale / self.options.temperature  # (batch, heads, seq, seq)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        probs = F.dropout(torch.softmax(scores, dim=-1), p=self.dropout, training=self.training)
        return probs @ v


@pytest.fixture
def toy():
    attention.register("toy", ToyAttention)
    yield "toy"
    attention.unregister("toy")


def cores(model) -> List[AttentionCore]:
    return [layer.attention.core for layer in model.encoder.layers]


def test_registered_kind_is_listed_built_and_validated(toy):
    assert attention.names()[-1] == toy and "plain torch" in attention.choices()[toy]
    assert attention.options_of(toy) == {"temperature": 1.0}
    assert "divides" in attention.option_help(toy)["temperature"]
    module = attention.build(toy, num_heads=2, head_dim=8, max_length=16, temperature=2.0)
    assert isinstance(module, ToyAttention) and module.options == ToyOptions(temperature=2.0)
    with pytest.raises(ConfigError, match=r"unknown toy attention option 'temprature'.*did you mean 'temperature'"):
        attention.build(toy, num_heads=2, head_dim=8, max_length=16, temprature=2.0)
    with pytest.raises(ConfigError, match="built for 2 heads"):
        module(*(torch.randn(1, 3, 5, 8) for _ in range(3)))
    with pytest.raises(ValueError, match="already registered"):
        attention.register(toy, ToyAttention)


def test_unregister_removes_the_kind():
    attention.register("toy2", ToyAttention)
    attention.unregister("toy2")
    assert "toy2" not in attention.names()
    with pytest.raises(ConfigError, match="unknown attention kind 'toy2'"):
        attention.build("toy2", num_heads=2, head_dim=8, max_length=16)


def test_checkpoint_with_registered_kind_equals_full_attention(toy, tiny_task, make_batch):
    """The toy re-implements softmax attention, so a checkpoint loaded with it equals the same checkpoint
    with the built-in full attention (torch SDPA), with padding."""
    full = nanoft.load_model(tiny_task["model_nodrop"], head=None).eval()
    converted = nanoft.load_model(tiny_task["model_nodrop"], head=None, attention=toy).eval()
    assert all(isinstance(core, ToyAttention) for core in cores(converted))
    ids, mask = make_batch([9, 5, 7], vocab_size=25, pad_id=0, low=5)
    with torch.no_grad():
        real = mask.bool()
        assert_close(converted(ids, mask)[real], full(ids, mask)[real], atol=1e-5, rtol=1e-5)
    assert all(core.calls == [False] for core in cores(converted))


def test_trainer_trains_one_step_with_registered_kind(toy, tiny_config):
    trainer = Trainer(tiny_config(attention=toy, attention_options={"temperature": 1.0}, max_steps=1))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.fit()
    assert all(isinstance(core, ToyAttention) and True in core.calls for core in cores(trainer.model))
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    # Queries and keys reach the loss only through the toy's softmax: their weights moving shows the
    # gradient went through it in every layer.
    for i in range(len(trainer.model.encoder.layers)):
        for proj in ("query", "key"):
            name = f"encoder.layers.{i}.attention.{proj}.weight"
            assert not torch.equal(before[name], trainer.model.get_parameter(name)), name
