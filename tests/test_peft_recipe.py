"""The PEFT recipe defaults (issue 19): `--peft NAME` without `--lr` trains at the method's recipe rate, written
once on its registry record; `--help` and the run's config.toml show the rate actually used, LoRA's default
targets and alpha are what the committed sweep chose, and an explicit --lr (flag, TOML file or Python) wins."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nanoft import peft
from nanoft.cli import cli, config_from_cli, train
from nanoft.train.config import FULL_FINETUNING_LR, TrainConfig, read_toml

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
SWEEPS = (RESULTS / "lora_sweep.json", RESULTS / "pissa_vera_sweep.json")


def recipe():
    """{method: {"lr": ..., "targets": [...], "alpha": ...}}: the choice the committed sweep files record."""
    chosen = {}
    for sweep in SWEEPS:
        chosen.update(json.loads(sweep.read_text())["meta"]["recipe"])
    return chosen


def parse(*args: str) -> TrainConfig:
    return config_from_cli(train.make_context("train", list(args)))


def help_entry(flag: str) -> str:
    """The whole `nanoft train --help` entry of `flag`, wrapped lines joined."""
    text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200, max_content_width=200).output
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {flag} ") or line == f"  {flag}")
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("   "):
            break
        entry.append(line.strip())
    return " ".join(entry)


def test_registry_holds_the_sweeps_choice():
    chosen = recipe()
    assert set(chosen) >= {"lora", "rslora", "dora", "pissa", "vera"}
    for method, settings in chosen.items():
        record = peft.get(method)
        assert record.lr == settings["lr"] and record.lr_source, method
        defaults = peft.options_of(method)
        for key in ("targets", "alpha", "r"):
            if key in settings:
                assert list(defaults[key]) == settings[key] if key == "targets" else defaults[key] == settings[key]


def test_help_shows_each_rate_and_the_default_targets():
    lr = help_entry("--lr")
    assert f"{FULL_FINETUNING_LR:g}" in lr
    for method in peft.names():
        if peft.get(method).lr is not None:
            assert f"{method} {peft.get(method).lr:g}" in lr, (method, lr)
    assert f"[default: {','.join(recipe()['lora']['targets'])}]" in help_entry("--lora-targets")


def test_explicit_rate_wins_and_the_default_is_resolved_once(tmp_path, capsys):
    lora_lr = recipe()["lora"]["lr"]
    assert TrainConfig(task="sst2").lr == FULL_FINETUNING_LR == 5e-5
    assert TrainConfig(task="sst2", peft="lora").lr == lora_lr
    assert TrainConfig(task="sst2", peft="lora", lr=2e-4).lr == 2e-4
    assert TrainConfig.from_dict({"task": "sst2", "peft": "dora"}).lr == recipe()["dora"]["lr"]
    assert parse("--task", "sst2", "--peft", "lora", "--lr", "3e-5").lr == 3e-5
    assert "without --lr" not in capsys.readouterr().err
    assert parse("--task", "sst2", "--peft", "lora").lr == lora_lr
    assert f"--peft lora without --lr: lr {lora_lr:g}" in capsys.readouterr().err
    toml = tmp_path / "run.toml"
    toml.write_text('task = "sst2"\npeft = "lora"\nlr = 7e-4\n')
    assert parse("--config", str(toml)).lr == 7e-4  # a rate in the file is explicit too
    assert parse("--task", "sst2").lr == 5e-5


@pytest.mark.parametrize("extra,expected", [((), "recipe"), (("--lr", "0.002"), 0.002)])
def test_config_toml_records_the_rate_the_run_used(tiny_task, tmp_path, extra, expected):
    out = tmp_path / "run"
    args = ["train", "--train-file", str(tiny_task["data"] / "train.tsv"), "--dev-file",
            str(tiny_task["data"] / "dev.tsv"), "--text-column", "text", "--label-column", "label",
            "--model", str(tiny_task["model"]), "--max-length", "32", "--batch-size", "8", "--max-steps", "2",
            "--precision", "fp32", "--quiet", "--no-save-best", "--output", str(out), "--peft", "lora", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = read_toml(out / "config.toml")
    want = recipe()["lora"]["lr"] if expected == "recipe" else expected
    assert saved["lr"] == want
    assert saved.get("peft_options", {}).get("targets", list(peft.options_of("lora")["targets"])) == \
        recipe()["lora"]["targets"]


def test_pissa_and_vera_rates_are_their_sweeps_winners():
    """The committed PiSSA/VeRA sweep names, per method, the run with the best dev score: the registry's rate."""
    sweep = json.loads((RESULTS / "pissa_vera_sweep.json").read_text())
    for method, winner in sweep["meta"]["winners_on_dev"]["sst2"].items():
        best = max((r for r in sweep["rows"] if r["method"] == method), key=lambda r: r["dev_best"])
        assert winner["lr"] == best["lr"] == peft.get(method).lr, method
