"""`nanoft train`'s options are generated from TrainConfig and the PEFT registry: one option per field,
defaults and sections as the dataclasses say, the --config overlay, one-line errors for bad names."""
from __future__ import annotations

import dataclasses
import re
import sys
import typing

import pytest
from click.testing import CliRunner

from nanoft import peft
from nanoft.cli import FieldOption, cli, config_from_cli, main, train, train_params
from nanoft.errors import ConfigError
from nanoft.peft.registry import flag_of
from nanoft.train.config import SECTIONS, TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_options():
    return [p for p in train_params() if isinstance(p, FieldOption)]


def parse(*args: str) -> TrainConfig:
    """The TrainConfig `nanoft train ARGS` would run (parsed only, nothing trained)."""
    return config_from_cli(train.make_context("train", list(args)))


def peft_fields():
    """(method, options field, flag) for every option of every registered PEFT method."""
    for method in peft.names():
        options = peft.get(method).options
        for f in dataclasses.fields(options):
            yield method, f, flag_of(options, f, method)


def test_every_config_field_has_exactly_one_option():
    options = field_options()
    for name in FIELDS:
        if name == "peft_options":
            continue
        assert [o.key for o in options if o.field == name] == [None], name
    # peft_options has no flag of its own: each option of each PEFT method is one flag, keyed by its name
    keyed = {o.opts[0]: o for o in options if o.field == "peft_options"}
    expected = {flag: f.name for _, f, flag in peft_fields()}
    assert {flag: o.key for flag, o in keyed.items()} == expected
    assert {"--lora-r", "--lora-alpha", "--lora-dropout", "--lora-targets", "--rslora", "--dora",
            "--adapter-reduction", "--adapter-non-linearity"} <= set(keyed)


def _expected_default(f: dataclasses.Field):
    """What `--help` should show as the default of field `f`, worked out from the dataclass alone."""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(default, bool):
        if "/" in f.metadata.get("flag", "") or default:  # an on/off pair shows the default's name
            return f.name.replace("_", "-") if default else "no-" + f.name.replace("_", "-")
        return None  # a plain off switch shows no default
    if default in (None, [], {}, ()):
        unset = f.metadata.get("unset")
        return f"({unset() if callable(unset) else unset})" if unset else None
    if isinstance(default, (list, tuple)):
        return ",".join(default)
    return str(default)


def help_text() -> str:
    result = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200, max_content_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def help_records(text: str):
    """{flag: its whole entry} from rendered `--help` text (entries start with '  --')."""
    records, flag = {}, None
    for line in text.splitlines():
        m = re.match(r"  (--[a-z0-9-]+)", line)
        if m:
            flag = m.group(1)
            records[flag] = line
        elif flag and line.startswith("   "):
            records[flag] += " " + line.strip()
        else:
            flag = None
    return records


def test_help_shows_dataclass_defaults_under_section_headings():
    text = help_text()
    records = help_records(text)
    options = {o.field: o for o in field_options() if o.key is None}
    cases = [(f, options[name].opts[0], options[name]) for name, f in FIELDS.items() if name != "peft_options"]
    first = {}  # PEFT flags shared by several methods show the first one's class default
    for _, f, flag in peft_fields():
        first.setdefault(flag, f)
    keyed = {o.opts[0]: o for o in field_options() if o.key is not None}
    cases += [(f, flag, keyed[flag]) for flag, f in first.items()]
    for f, flag, option in cases:
        expected = _expected_default(f)
        entry = records[flag]
        if expected is None:
            assert "[default:" not in entry, entry
        else:
            assert f"[default: {expected}]" in entry, entry
        # the click parameter itself carries the dataclass default (in its command-line form)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if isinstance(default, (list, tuple, dict)) and not option.multiple:
            assert option.default == (",".join(default) if default else None)
        elif option.multiple:
            assert tuple(option.default) == tuple(default)
        else:
            assert option.default == default
    # one heading per section, in order, each holding exactly its fields' flags
    headings = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Z][A-Za-z -]+:", line)]
    assert headings == ["Options", *SECTIONS.values()]
    positions = {title: text.index(f"\n{title}:\n") for title in SECTIONS.values()}
    bounds = sorted(positions.values()) + [len(text)]
    for option in field_options():
        at = re.search(rf"\n  {re.escape(option.opts[0])}[ \n]", text).start()
        section = FIELDS[option.field].metadata["section"]
        start = positions[SECTIONS[section]]
        assert start < at < bounds[bounds.index(start) + 1], option.opts[0]


def test_method_specific_defaults_are_noted():
    records = help_records(help_text())
    assert "--peft pfeiffer: relu" in records["--adapter-non-linearity"]
    assert "[default: swish]" in records["--adapter-non-linearity"]
    assert "--peft rslora: on" in records["--rslora"]


@pytest.mark.parametrize("method,option,flag", list(peft_fields()), ids=lambda x: x if isinstance(x, str) else "")
def test_peft_flags_land_in_peft_options(method, option, flag):
    """Each PEFT flag sets its option, by name, and the method accepts the result."""
    meta, kind = option.metadata, typing.get_type_hints(peft.get(method).options)[option.name]
    if kind is bool:
        args, expected = [flag], True
    elif meta.get("choices"):
        args, expected = [flag, meta["choices"][-1]], meta["choices"][-1]
    elif meta.get("patterns"):
        args, expected = [flag, "query, key"], ["query", "key"]
    elif kind is int:
        args, expected = [flag, "3"], 3
    else:
        args, expected = [flag, "0.25"], 0.25
    config = parse("--task", "sst2", "--peft", method, *args)
    assert config.peft == method and config.peft_options == {option.name: expected}
    assert getattr(peft.registry.make_options(method, config.peft_options), option.name) == expected


def test_config_file_overlay(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text('task = "sst2"\nlr = 1e-3\nbatch_size = 16\nmax_grad_norm = 0\n'
                    'attention_options = {window = 64, global_tokens = 1}\npeft = "lora"\npeft_options = {r = 2}\n')
    config = parse("--config", str(toml), "--lr", "2e-3", "--attention-option", "window=128",
                   "--lora-targets", "query,key", "--layer-lrs", "1e-5, 2e-5", "--text-column", "a",
                   "--text-column", "b", "--no-save-best", "--compile")
    assert config.lr == 2e-3 and config.batch_size == 16  # options not given keep the file's values
    assert config.max_grad_norm is None  # 0 means off
    assert config.attention_options == {"window": 128, "global_tokens": 1}
    assert config.peft_options == {"r": 2, "targets": ["query", "key"]}
    assert config.layer_lrs == [1e-5, 2e-5] and config.text_columns == ["a", "b"]
    assert config.save_best is False and config.compile is True
    assert config.epochs == TrainConfig.epochs and config.seed == TrainConfig.seed
    assert parse("--task", "SST-2", "--schedule", "one_cycle").task == "sst2"  # names fold like the registries'
    assert parse("--task", "sst2", "--max-grad-norm", "0").max_grad_norm is None
    with pytest.raises(ConfigError, match="--attention-option 'window' is not KEY=VALUE"):
        parse("--task", "sst2", "--attention-option", "window")
    with pytest.raises(ConfigError, match="--layer-lrs: 'x' is not a float"):
        parse("--task", "sst2", "--layer-lrs", "1e-5,x")


@pytest.mark.parametrize("flag,value,near,valid", [
    ("--attention", "perfomer", "performer", ["full", "linformer", "performer", "longformer", "bigbird"]),
    ("--peft", "lorra", "lora", ["lora", "rslora", "dora", "pissa", "vera", "houlsby", "pfeiffer", "ia3",
                                  "bitfit"]),
])
def test_unknown_name_is_one_line_listing_choices(flag, value, near, valid, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["nanoft", "train", "--task", "sst2", flag, value])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"unknown {flag} '{value}'" in err and f"did you mean '{near}'" in err
    assert f"valid: {', '.join(valid)}" in err
