"""The `nanoft` command: info, train, pretrain, eval, predict, run, report, glue, bench, plot.

Each command is a thin wrapper over a plain function; user errors (`NanoftError`) print one
line and exit 2, never a traceback.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import logging
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import click
from click.core import ParameterSource

from nanoft.errors import ConfigError, NanoftError
from nanoft.glue import RECIPE as GLUE_RECIPE

if typing.TYPE_CHECKING:
    from nanoft.train.config import TrainConfig

# --------------------------------------------------------------------------------- train options
# `nanoft train`'s options are generated from the TrainConfig fields (nanoft/train/config.py) and the
# options dataclasses of the registered PEFT methods (nanoft/peft/registry.py): flag, type, default,
# choices, help and --help section all come from there, so the CLI, TOML files and Python agree.


def _fold(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


class Names(click.ParamType):
    """A name from a registry, read when used (so methods registered later count); case, '-' and '_'
    are ignored ('SST-2' is sst2). A bad name is a one-line ConfigError listing the valid ones."""

    name = "name"

    def __init__(self, choices: Union[Sequence[str], Callable[[], Sequence[str]]]) -> None:
        self.choices = choices

    def names(self) -> List[str]:
        return list(self.choices() if callable(self.choices) else self.choices)

    def get_metavar(self, param: click.Parameter, ctx: Optional[click.Context] = None) -> str:
        return "[" + "|".join(self.names()) + "]"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        names = self.names()
        by_fold = {_fold(n): n for n in names}
        if _fold(str(value)) in by_fold:
            return by_fold[_fold(str(value))]
        near = difflib.get_close_matches(str(value), names, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        flag = param.opts[0] if param is not None else "value"
        raise ConfigError(f"unknown {flag} {value!r}", fix=f"{hint}valid: {', '.join(names)}")


class SectionOption(click.Option):
    """An option listed under a heading of `--help` (see SectionedCommand)."""

    def __init__(self, *args: Any, section: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class FieldOption(SectionOption):
    """The option of one dataclass field: a TrainConfig field, or a PEFT method's option whose value goes
    `into` ("peft_options", its name). `notes` are methods whose own default differs: {method: default}."""

    def __init__(self, f: dataclasses.Field, annotation: Any, *, section: str, flag: Optional[str] = None,
                 into: Optional[Tuple[str, str]] = None, notes: Optional[Dict[str, Any]] = None) -> None:
        meta = f.metadata
        self.field, self.key = into or (f.name, None)  # config field, and key inside it (a dict field)
        self.kind, self.item = _shape(annotation)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        flag = flag or meta.get("flag") or "--" + f.name.replace("_", "-")
        help_text = meta.get("help", "")
        if notes:
            help_text += " (" + "; ".join(f"--peft {m}: {_show(v)}" for m, v in notes.items()) + ")"
        unset = meta.get("unset") if default in (None, [], {}, ()) else None
        if callable(unset):  # computed from a registry when the CLI is built (e.g. --lr's per-method rates)
            unset = unset()
        kwargs: Dict[str, Any] = dict(help=help_text, metavar=meta.get("metavar"), show_default=unset or True)
        if self.kind == "scalar" and self.item is bool:
            if default and "/" not in flag:
                flag = f"{flag}/--no-{flag[2:]}"
            kwargs.update(is_flag=True, default=default)
        elif self.kind == "dict" or meta.get("multiple"):
            kwargs.update(multiple=True, type=str if self.kind == "dict" else self.item, default=tuple(default))
        elif self.kind == "list":  # comma-separated on the command line
            kwargs.update(type=str, default=",".join(map(str, default)) if default else None)
        else:
            choices = meta.get("choices")
            kwargs.update(type=Names(choices) if choices else self.item, default=default)
        super().__init__([flag, _param_name(flag)], section=section, **kwargs)

    def to_config(self, value: Any) -> Any:
        """The command-line value as the config holds it."""
        if self.kind == "dict":
            return dict(_key_value(self.opts[0], item) for item in value)
        if self.multiple:
            return list(value)
        if self.kind == "list":
            return [_list_item(self.opts[0], x.strip(), self.item) for x in value.split(",") if x.strip()]
        return value


def _param_name(flag: str) -> str:
    return flag.split("/")[0].lstrip("-").replace("-", "_")


def _shape(annotation: Any) -> Tuple[str, Any]:
    """("scalar", int) / ("list", float) / ("dict", None) of a field's type, Optional[...] stripped."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Union and len(args) == 1:
        return _shape(args[0])
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, collections.abc.Sequence):
        return "list", (args[0] if args else str)
    if origin is dict:
        return "dict", None
    return "scalar", annotation


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _key_value(flag: str, item: str) -> Tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"{flag} {item!r} is not KEY=VALUE", fix=f"e.g. {flag} window=128")
    from nanoft.train.config import parse_scalar

    key, raw = item.split("=", 1)
    return key.strip(), parse_scalar(raw.strip())


def _list_item(flag: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a {kind.__name__}", fix="give a comma-separated list") from None


def _peft_options(into: str, section: str) -> List[FieldOption]:
    """One option per field of the registered PEFT methods' options classes; methods that share a class
    (lora, rslora, dora) share its flags."""
    from nanoft import peft
    from nanoft.peft.registry import flag_of

    found: Dict[str, Tuple[dataclasses.Field, Any, Dict[str, Any]]] = {}
    for name in peft.names():
        options = peft.get(name).options
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            flag = flag_of(options, f, name)
            first, _, defaults = found.setdefault(flag, (f, hints[f.name], {}))
            if first.name != f.name:
                raise TypeError(f"PEFT flag {flag} stands for two options, {first.name!r} and {f.name!r}")
            defaults[name] = peft.options_of(name)[f.name]
    return [FieldOption(f, annotation, section=section, flag=flag, into=(into, f.name),
                        notes={m: v for m, v in defaults.items() if v != f.default})
            for flag, (f, annotation, defaults) in found.items()]


def train_params() -> List[click.Parameter]:
    """`nanoft train`'s options, built from TrainConfig and the PEFT registry as they are now."""
    from nanoft.train.config import SECTIONS, TrainConfig

    return config_params(TrainConfig, SECTIONS, "nanoft train")


def config_params(config_class: type, sections: Dict[str, str], command: str,
                  exclude: Sequence[str] = ()) -> List[click.Parameter]:
    """One option per field of a config dataclass, grouped by `sections` ({metadata section: heading}, in
    order); fields of other sections and those named in `exclude` get no option."""
    hints = typing.get_type_hints(config_class)
    params: List[click.Parameter] = [
        SectionOption(["--config", "config_file"], type=click.Path(), metavar="FILE",
                      help="TOML file of options (the names below with _); options given here override it.")]
    for key, title in sections.items():
        for f in dataclasses.fields(config_class):
            if f.metadata["section"] != key or f.name in exclude:
                continue
            if f.metadata.get("peft_registry"):
                params += _peft_options(f.name, title)
            else:
                params.append(FieldOption(f, hints[f.name], section=title))
    flags = [o for p in params for o in p.opts + p.secondary_opts]
    for what, items in (("flag", flags), ("name", [p.name for p in params])):
        twice = sorted({x for x in items if items.count(x) > 1})
        if twice:
            raise TypeError(f"{command}: {what}s given twice: {', '.join(twice)}")
    return params


class SectionedCommand(click.Command):
    """A command whose --help lists options under one heading per section (click has no option groups)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: Dict[str, List[Tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                groups.setdefault(getattr(param, "section", None) or "Options", []).append(record)
        # one column width for all sections (write_dl moves names longer than col_max to their own line)
        width = min(30, max(len(name) for rows in groups.values() for name, _ in rows))
        for title, rows in groups.items():
            with formatter.section(title):
                formatter.write_dl([(name.ljust(width), text) for name, text in rows], col_max=30)


class TrainCommand(SectionedCommand):
    """`nanoft train`: its options are rebuilt from the config and the registries whenever asked for."""

    def get_params(self, ctx: click.Context) -> List[click.Parameter]:
        self.params = train_params()
        return super().get_params(ctx)


def config_from_cli(ctx: click.Context, config_class: Optional[type] = None) -> "TrainConfig":
    """TrainConfig (or `config_class`) from the optional --config TOML file, overlaid with the options given
    on the command line."""
    from nanoft.train.config import TrainConfig, read_toml

    cls = config_class or TrainConfig
    config_file = ctx.params.get("config_file")
    values: Dict[str, Any] = read_toml(config_file) if config_file else {}
    if config_file:
        cls.from_dict(values, source=config_file)  # unknown keys: name them, suggest nearest
    for param in ctx.command.params:
        if not isinstance(param, FieldOption) or ctx.get_parameter_source(param.name) in (
                None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            continue
        value = param.to_config(ctx.params[param.name])
        if param.key is not None:
            value = {param.key: value}
        if isinstance(value, dict):  # dict fields add to the file's: --attention-option, --lora-r, ...
            value = {**values.get(param.field, {}), **value}
        values[param.field] = value
    for f in dataclasses.fields(cls):
        if "off" in f.metadata and values.get(f.name) == f.metadata["off"]:
            values[f.name] = None
    config = cls.from_dict(values, source=config_file or "command line")
    if getattr(config, "peft", None) and "lr" not in values:
        from nanoft import peft

        method = peft.get(config.peft)
        why = (f"its recipe rate ({method.lr_source})" if method.lr is not None
               else "full fine-tuning's rate: the method has no recipe rate of its own")
        click.echo(f"--peft {config.peft} without --lr: lr {config.lr:g}, {why}", err=True)
    return config


# --------------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="nanoft")
@click.option("-v", "--verbose", is_flag=True, help="Log details (checkpoint reports, evaluations) to stderr.")
def cli(verbose: bool) -> None:
    """nanoft: fine-tune and study encoder transformers (BERT, RoBERTa, DistilBERT) in pure PyTorch."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@cli.command()
@click.argument("path", required=False, type=click.Path())
@click.option("--task", help="Describe a task instead: splits, labels, lengths and padding waste.")
@click.option("--data-dir", type=click.Path(), help="Folder holding task data. [default: $NANOFT_DATA_DIR]")
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2),
              help="Max tokens, for the task's length profile.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Batch size, for the padding-waste figures.")
def info(path: Optional[str], task: Optional[str], data_dir: Optional[str], max_length: int, batch_size: int) -> None:
    """Describe a checkpoint (family, sizes, parameters, tensors, tokenizer) or a task (--task)."""
    from nanoft.commands import describe_model, describe_task

    if task:
        click.echo(describe_task(task, data_dir, path, max_length, batch_size))
    else:
        click.echo(describe_model(path))


@cli.command(cls=TrainCommand)
@click.pass_context
def train(ctx: click.Context, **kwargs: Any) -> None:
    """Fine-tune a model on a task or your own files; writes a run directory."""
    from nanoft.commands import train_and_report

    click.echo(train_and_report(config_from_cli(ctx)))


class PretrainCommand(SectionedCommand):
    """`nanoft pretrain`: options generated from PretrainConfig, like `nanoft train`'s from TrainConfig."""

    def get_params(self, ctx: click.Context) -> List[click.Parameter]:
        from nanoft.train.pretrain import NOT_OPTIONS, SECTIONS, PretrainConfig

        self.params = config_params(PretrainConfig, SECTIONS, "nanoft pretrain", exclude=NOT_OPTIONS)
        return super().get_params(ctx)


@cli.command(cls=PretrainCommand)
@click.pass_context
def pretrain(ctx: click.Context, **kwargs: Any) -> None:
    """Masked-LM pretraining, continued from a checkpoint or from scratch; writes a run directory."""
    from nanoft.train.pretrain import PretrainConfig, pretrain_and_report

    click.echo(pretrain_and_report(config_from_cli(ctx, PretrainConfig)))


@cli.command("eval")
@click.argument("run_or_model", type=click.Path())
@click.option("--task", help="Task to evaluate on. [default: the run's task]")
@click.option("--split", default=None, help="Split to evaluate. [default: the task's dev split(s)]")
@click.option("--data-dir", type=click.Path(), help="Folder holding task data. [default: $NANOFT_DATA_DIR]")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1), help="Evaluation batch size.")
@click.option("--max-length", default=None, type=click.IntRange(min=2), help="Max tokens. [default: the run's]")
@click.option("--objective", type=click.Choice(["task", "mlm"]), default="task", show_default=True,
              help="mlm: masked-LM loss and perplexity on --text-file, with a pretraining run's fixed seeded mask.")
@click.option("--text-file", type=click.Path(), help="With --objective mlm: one document per line (or TSV/CSV/JSONL).")
@click.option("--mask-rate", default=0.15, show_default=True, help="With --objective mlm: fraction of tokens masked.")
@click.option("--eval-mask-seed", default=0, show_default=True, help="With --objective mlm: seed of the fixed mask.")
@click.option("--whole-word-mask", is_flag=True, help="With --objective mlm: mask whole words (as the run did).")
@click.option("--document-mask", is_flag=True, help="With --objective mlm: attend within documents (as a "
                                                    "--document-mask run did).")
def eval_command(run_or_model: str, task: Optional[str], split: Optional[str], data_dir: Optional[str],
                 batch_size: int, max_length: Optional[int], objective: str, text_file: Optional[str],
                 mask_rate: float, eval_mask_seed: int, whole_word_mask: bool, document_mask: bool) -> None:
    """Evaluate a run (its best model) or a model directory on a task split, or its perplexity on a text file."""
    from nanoft.commands import evaluate_path

    if objective == "mlm":
        from nanoft.train.pretrain import evaluate_text

        if not text_file:
            raise ConfigError("--objective mlm needs --text-file", fix="pass --text-file FILE")
        m = evaluate_text(run_or_model, text_file, max_length or 128, batch_size, mask_rate, eval_mask_seed,
                          whole_word_mask, document_mask=document_mask)
        click.echo(f"masked-LM {text_file} ({m['tokens']} predicted tokens): loss {m['loss']:.4f} "
                   f"perplexity {m['perplexity']:.2f}")
        return
    click.echo(evaluate_path(run_or_model, task, split, data_dir, batch_size, max_length))


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.option("--input", "input_file", required=True, type=click.Path(),
              help="TSV/CSV/JSONL/Parquet/Arrow file with the text column(s), or .txt: one text per line.")
@click.option("--output", "output_file", type=click.Path(), help="Where to write predictions (.csv, .tsv or .jsonl). [default: stdout as TSV]")
@click.option("--text-column", "text_columns", multiple=True,
              help="Text column(s) of the input. [default: the run's if the input has them, else its column "
                   "'text' or its only text column]")
@click.option("--no-header", is_flag=True, help="The input has no header row (columns are integers).")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1), help="Batch size.")
@click.option("--max-length", default=None, type=click.IntRange(min=2), help="Max tokens. [default: the run's]")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
              help="RUN_OR_MODEL is then the base checkpoint: load onto it the adapter (with its head and labels) of a "
                   "`train --peft` run DIR; repeatable: each row goes through the adapter its --adapter-column names.")
@click.option("--adapter-column", help="With several --adapter: the input column naming each row's adapter.")
def predict(run_or_model: str, input_file: str, output_file: Optional[str], text_columns: tuple, no_header: bool,
            batch_size: int, max_length: Optional[int], adapters: tuple, adapter_column: Optional[str]) -> None:
    """Predict labels (with names and probabilities) for every row of a file; the output keeps the texts and
    each row's line in the input. With --adapter: many adapters on one base, each row with its own adapter, head
    and labels."""
    from nanoft.commands import predict_adapters_file, predict_file

    if adapters:
        text = predict_adapters_file(run_or_model, list(adapters), adapter_column, input_file, output_file,
                                     list(text_columns), no_header, batch_size, max_length)
    elif adapter_column:
        raise ConfigError("--adapter-column needs --adapter NAME=DIR", fix="load the adapters it names")
    else:
        text = predict_file(run_or_model, input_file, output_file, list(text_columns), no_header, batch_size,
                            max_length)
    if text:
        click.echo(text, nl=False)


def parse_seeds(text: str) -> List[int]:
    """--seeds 1,2,3 as integers; anything else is one clear error."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise ConfigError(f"--seeds {text!r} is not a comma-separated list of integers", fix="e.g. --seeds 1,2,3")
    return seeds


@cli.command()
@click.argument("experiments", type=click.Path())
@click.option("--only", multiple=True, help="Run only these experiment names (repeatable).")
@click.option("--seeds", help="Override the seeds, comma-separated.")
@click.option("--tasks", help="Run only these of the file's tasks, comma-separated (e.g. to run tasks in parallel "
                              "processes).")
@click.option("--output-root", type=click.Path(), help="Folder for the runs. [default: from the file, else runs/]")
def run(experiments: str, only: tuple, seeds: Optional[str], tasks: Optional[str], output_root: Optional[str]) -> None:
    """Run the named experiments of a TOML file in sequence, each × seeds; skips finished runs."""
    from nanoft.experiment import run_experiments

    seed_list = parse_seeds(seeds) if seeds else None
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    summary = run_experiments(experiments, only=list(only) or None, seeds=seed_list, output_root=output_root,
                              tasks=task_list)
    click.echo(summary["table"])
    if summary["failed"]:
        click.echo(f"{len(summary['failed'])} run(s) failed: " + "; ".join(summary["failed"]), err=True)
        sys.exit(1)


@cli.command()
@click.argument("runs_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True, help="Output format (json: every statistic and each seed's value).")
@click.option("--by-task", is_flag=True, help="One row per experiment, one column group per task: seeds, the "
                                              "task's main metric (mean ± std / max) and train seconds per run.")
@click.option("--compare", metavar="METRIC", help="Instead of the table, every pair of experiments on this "
              "metric (e.g. test.accuracy): difference of seed means, its standard error, Welch's t, and whether "
              "the difference exceeds two standard errors.")
@click.option("--output", "output_file", type=click.Path(), help="Also write the report to this file.")
def report(runs_dir: str, fmt: str, by_task: bool, compare: Optional[str], output_file: Optional[str]) -> None:
    """Aggregate runs: mean ± std and max over seeds of every metric, time and throughput."""
    from nanoft.experiment import report_text

    text = report_text(runs_dir, fmt, by_task=by_task, compare=compare)
    if output_file:
        from nanoft.io import atomic_write_text

        atomic_write_text(output_file, text + "\n")
    click.echo(text)


@cli.command()
@click.option("--model", "models", multiple=True, type=click.Path(),
              help="Model directory or run directory; repeat for one row per model. [default: the installed MiniLM]")
@click.option("--data-dir", type=click.Path(), help="Folder holding the GLUE tasks. [default: $NANOFT_DATA_DIR]")
@click.option("--seeds", default="1,2,3", show_default=True, help="Seeds, comma-separated (each task x seed is a run).")
@click.option("--lr", type=float, help=f"Learning rate. [default: {GLUE_RECIPE['lr']:g}, run_glue's]")
@click.option("--batch-size", type=click.IntRange(min=1), help=f"Batch size. [default: {GLUE_RECIPE['batch_size']}]")
@click.option("--epochs", type=float, help=f"Epochs. [default: {GLUE_RECIPE['epochs']:g}]")
@click.option("--max-length", type=click.IntRange(min=2), help=f"Max tokens. [default: {GLUE_RECIPE['max_length']}]")
@click.option("--train-subset", type=int, help="Train on a seeded random subset of N examples per task (budget).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Any other `nanoft train` option for every run, e.g. warmup=0.1; repeatable.")
@click.option("--dev-text", type=click.Path(), help="Also report each model's masked-LM perplexity on this text file.")
@click.option("--dev-tasks", metavar="TASK[,TASK...]",
              help="Also report each model's masked-LM perplexity on these tasks' held-out texts (what `nanoft "
                   "pretrain --task` on them evaluates).")
@click.option("--select", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="Score a run by its last evaluation (as run_glue) or its best one.")
@click.option("--output-root", default="runs/glue", show_default=True, type=click.Path(), help="Folder for the runs.")
@click.option("--output", "output_file", type=click.Path(), help="Also write the table to FILE.md and FILE.csv.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv"]), default="markdown",
              show_default=True, help="Printed format.")
@click.option("--no-run", is_flag=True, help="Only tabulate the runs already in --output-root.")
def glue(models: Tuple[str, ...], data_dir: Optional[str], seeds: str, lr: Optional[float], batch_size: Optional[int],
         epochs: Optional[float], max_length: Optional[int], train_subset: Optional[int], options: Tuple[str, ...],
         dev_text: Optional[str], dev_tasks: Optional[str], select: str, output_root: str,
         output_file: Optional[str], fmt: str, no_run: bool) -> None:
    """Fine-tune on every GLUE task in --data-dir with one recipe and N seeds; print the GLUE table (max over
    seeds for CoLA, RTE, WNLI, MRPC, STS-B, mean for the rest; absent tasks shown absent)."""
    from nanoft.glue import glue_report, parse_options

    values = parse_options(options)
    for key, value in (("lr", lr), ("batch_size", batch_size), ("epochs", epochs), ("max_length", max_length),
                       ("train_subset", train_subset)):
        if value is not None:
            values[key] = value
    if not models:
        from nanoft.weights import default_model_path

        models = (str(default_model_path()),)
    seed_list = parse_seeds(seeds)
    report = glue_report(list(models), output_root, seed_list, data_dir, values, dev_text, select, run=not no_run,
                         dev_tasks=dev_tasks)
    if output_file:
        from nanoft.io import atomic_write_text

        atomic_write_text(f"{output_file}.md", report["markdown"] + "\n")
        atomic_write_text(f"{output_file}.csv", report["csv"] + "\n")
    click.echo(report[fmt])
    if report["failed"]:
        click.echo(f"{len(report['failed'])} run(s) failed: " + "; ".join(report["failed"]), err=True)
        sys.exit(1)


@cli.group()
def bench() -> None:
    """Benchmarks: speed, memory and accuracy, most against a reference. Each prints a table and writes
    JSON + Markdown to bench/results/ (with device, versions and the command). Pass --help to a
    benchmark for its own options."""


# Each benchmark owns its argument parser; these commands hand their arguments straight to it.
BENCHES = {
    "load": ("nanoft.bench.load", "cli", "Checkpoint load time/memory and eval forward ex/s vs transformers."),
    "train": ("nanoft.bench.train", "cli", "Training examples/s and accuracy vs transformers (same recipe, same run)."),
    "peft": ("nanoft.bench.peft", "main", "Full fine-tuning vs LoRA/rsLoRA/DoRA/adapters/BitFit/IA3: metric, size, speed, memory."),
    "attention": ("nanoft.bench.attention", "_cli", "Attention kinds: time and peak memory vs sequence length, log-log slopes."),
    "kernels": ("nanoft.bench.attention_kernels", "main", "Fused Triton kernels vs naive, SDPA backends and FlexAttention."),
    "tokenize": ("nanoft.bench.tokenize", "main", "Tokenize + cache time, cold and warm, vs the transformers tokenizer."),
    "sparse": ("nanoft.bench.sparse", "main", "Pruned encoder forward: dense vs CSR matmuls at 50-95% sparsity; 2:4 on CUDA."),
    "multinode": ("nanoft.bench.multinode", "main", "1 process vs 2 torchrun nodes on loopback (gloo): steps/s, restart time."),
    "mlm": ("nanoft.bench.mlm", "main", "Masked-LM training tokens/s vs transformers BertForMaskedLM (same blocks, same run)."),
    "unpad": ("nanoft.bench.unpad", "main", "Unpadded vs padded encoder: training examples/s on the same batches."),
    "sparse-runs": ("nanoft.bench.sparse_runs", "main", "Sparse-training tables from `nanoft run` folders: metric over seeds, fraction of dense, sparsity three ways."),
    "peft-runs": ("nanoft.bench.peft_runs", "main", "PEFT tables from `nanoft run` folders: sweep winners; mean ± std over seeds, size, speed, memory."),
    "parity": ("nanoft.bench.parity", "cli", "Accuracy (seeds, Welch's t) and speed vs transformers on every shared task."),
    "convert": ("nanoft.bench.convert", "main", "How far each converted attention kind starts from the checkpoint: per-layer error, [CLS] cosine."),
    "tapt": ("nanoft.bench.tapt", "main", "Task-adaptive masked-LM pretraining: perplexity before/after, fine-tuning with vs without, seeds."),
    "scratch": ("nanoft.bench.scratch", "main", "A from-scratch pretraining run judged by its masked-LM curve and the GLUE table of its checkpoints."),
}


def _bench_command(name: str, module: str, function: str, help_text: str) -> None:
    @bench.command(name, help=help_text, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple) -> None:
        import importlib

        getattr(importlib.import_module(module), function)(list(args))


for _name, (_module, _function, _help) in BENCHES.items():
    _bench_command(_name, _module, _function, _help)


class PlotGroup(click.Group):
    """`nanoft plot RUN...` is `nanoft plot runs RUN...`: arguments that name no subcommand go to `runs`."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["runs", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=PlotGroup)
def plot() -> None:
    """Pictures, PNG or SVG (needs matplotlib: pip install nanoft[plot]).

    \b
    nanoft plot RUN_OR_RUNS_DIR... --y loss --output loss.png    training curves; seeds as mean ± std
    nanoft plot bench bench/results/attention_cpu.json            the figure of a benchmark result
    """


@plot.command("runs")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--y", "y", default="loss", show_default=True,
              help="What to draw: loss, lr, grad_norm, examples_per_s, or SPLIT.METRIC of the evaluations "
                   "(dev.accuracy, dev.matthews_corrcoef, dev.loss, ...).")
@click.option("--x", "x", type=click.Choice(["step", "examples", "seconds"]), default="step", show_default=True,
              help="Horizontal axis: optimizer steps, training examples seen, or training seconds.")
@click.option("--smooth", default=1, show_default=True, help="Trailing mean over N logged points (1: none).")
@click.option("--log-y", is_flag=True, help="Logarithmic y axis.")
@click.option("--title", help="Figure title. [default: what is drawn]")
@click.option("--output", "-o", "output", required=True, type=click.Path(), help="Picture file: .png or .svg.")
def plot_runs_command(paths: Tuple[str, ...], y: str, x: str, smooth: int, log_y: bool, title: Optional[str],
                      output: str) -> None:
    """Curves of runs overlaid; the seed<k> runs of one experiment as mean with a ±std band."""
    from nanoft.plot import plot_runs, save

    click.echo(f"wrote {save(plot_runs(paths, y, x, smooth_window=smooth, title=title, log_y=log_y), output)}")


@plot.command("bench")
@click.argument("result", type=click.Path())
@click.option("--output", "-o", "output", type=click.Path(),
              help="Picture file: .png or .svg. [default: RESULT with .png]")
@click.option("--title", help="Figure title. [default: from the result file]")
def plot_bench_command(result: str, output: Optional[str], title: Optional[str]) -> None:
    """The figure of a benchmark result file: attention scaling, PEFT, techniques or training speed."""
    from pathlib import Path

    from nanoft.plot import plot_bench, save

    click.echo(f"wrote {save(plot_bench(result, title=title), output or Path(result).with_suffix('.png'))}")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # a bad option value: one line naming it, as for every other bad input
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        click.echo(f"error: {e.format_message()}{where}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except NanoftError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
