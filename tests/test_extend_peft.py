"""Extending PEFT: a method defined and registered in this file trains through the Trainer, and shows
up in `nanoft train`, exactly like a built-in one."""
from dataclasses import dataclass, field
from typing import Sequence

import pytest
import torch
from torch import nn

from nanoft import peft
from nanoft.errors import ConfigError


@dataclass
class GainOptions:
    targets: Sequence[str] = field(default=("query", "value"), metadata={
        "patterns": True, "help": "Linears whose output is scaled, comma-separated."})
    init: float = field(default=1.0, metadata={"help": "Starting gain."})


class Gain(nn.Module):
    """y = g · base(x): one learned scalar per layer; it folds into the weights (W' = gW, b' = gb)."""

    def __init__(self, base: nn.Linear, init: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(init, dtype=base.weight.dtype, device=base.weight.device))

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        return base(x) * self.gain

    def merge(self, base: nn.Linear) -> None:
        base.weight.mul_(self.gain)
        base.bias.mul_(self.gain)

    def unmerge(self, base: nn.Linear) -> None:
        base.weight.div_(self.gain)
        base.bias.div_(self.gain)


def register_gain() -> None:
    """The one call that adds the method: its options, its factory (a layer and the options → the adapter)."""
    peft.register("gain", GainOptions, lambda base, options, layer_name: Gain(base, options.init), mergeable=True)


@pytest.fixture
def gain_method():
    register_gain()
    yield
    peft.unregister("gain")


def test_registered_method_trains_one_step(gain_method, tiny_config):
    from nanoft.train import Trainer

    trainer = Trainer(tiny_config(peft="gain", peft_options={"init": 1.0}, max_steps=1))
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit()
    assert trainer.step == 1

    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, peft.PeftLayer)}
    assert set(wrapped) == {f"encoder.layers.{i}.attention.{k}" for i in (0, 1) for k in ("query", "value")}
    assert all(isinstance(layer.adapters["default"], Gain) for layer in wrapped.values())
    gains = {f"{n}.adapters.default.gain" for n in wrapped}
    head = {n for n in before if n.startswith("head.")}
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert gains <= changed and changed & head  # the gains and the head trained...
    assert changed <= gains | head  # ...and nothing else: every base weight is unchanged bit for bit
    assert {n for n, p in model.named_parameters() if p.requires_grad} == gains | head

    # the registered merge gives a plain model with the same outputs
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
    mask = (ids != 0).long()
    model.eval()
    with torch.no_grad():
        adapted = model(ids, attention_mask=mask)
        plain = peft.merged_copy(model)
        assert not any(isinstance(m, peft.PeftLayer) for m in plain.modules())
        torch.testing.assert_close(plain(ids, attention_mask=mask), adapted, rtol=0, atol=1e-5)


def test_registered_method_is_a_cli_option(gain_method):
    from nanoft.cli import config_from_cli, train

    ctx = train.make_context("train", ["--task", "sst2", "--peft", "gain", "--gain-init", "0.5",
                                       "--gain-targets", "query"])
    config = config_from_cli(ctx)
    assert config.peft == "gain" and config.peft_options == {"init": 0.5, "targets": ["query"]}
    from click.testing import CliRunner

    from nanoft.cli import cli

    text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200, max_content_width=200).output
    peft_section = text[text.index("\nParameter-efficient fine-tuning:\n"):text.index("\nOptimization:\n")]
    lines = {line.split()[0]: line for line in peft_section.splitlines() if line.startswith("  --")}
    assert "Starting gain.  [default: 1.0]" in lines["--gain-init"]
    assert "[default: query,value]" in lines["--gain-targets"]
    assert "|bitfit|gain]" in lines["--peft"]  # listed among the --peft choices


def test_unregistered_method_is_gone():
    register_gain()
    peft.unregister("gain")
    assert "gain" not in peft.names()
    with pytest.raises(ConfigError, match="unknown PEFT method 'gain'"):
        peft.apply(nn.Linear(2, 2), "gain")
    from nanoft.cli import train

    with pytest.raises(ConfigError, match="unknown --peft 'gain'"):
        train.make_context("train", ["--task", "sst2", "--peft", "gain"])
