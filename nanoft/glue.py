"""`nanoft glue`: fine-tune a model on every GLUE task found in the data folder and print the GLUE table.

    nanoft glue --model runs/mlm-scratch/best --seeds 1,2,3 --data-dir ../shared/data

One recipe for every task (default: `run_glue`'s lr 2e-5, batch 32, 3 epochs, 128 tokens; any TrainConfig key
through `--option KEY=VALUE`), several seeds each. The runs are an ordinary experiment file
(`OUTPUT/<model>/glue.toml`, replayable with `nanoft run`) run by the experiment runner, so finished runs are
skipped and an interrupted one resumes. A run's scores are its dev metrics at the end of training (as
`run_glue` reports them; `--select best` takes the best evaluation instead).

The table, one row per model, in GLUE's order and units (x100): the average without WNLI, the average of all
tasks, then each task's official metric(s), and the masked-LM perplexity on `--dev-text` when given. Seeds are
combined as BERT-style reports do: the max over seeds for the small, noisy tasks (CoLA, RTE, WNLI, MRPC,
STS-B; the seed with the best task score, so a task's metrics come from one run) and the mean for the rest;
a second row gives the mean over seeds of every task, with its std. A task's score is the mean of its
metrics (MNLI: of matched and mismatched), and the averages are over the tasks that have data: a task
without data is `absent`, never zero, and each average says how many tasks it covers.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from nanoft.errors import ConfigError, DataError
from nanoft.tables import render_table

log = logging.getLogger(__name__)

ABSENT = "absent"
EXPERIMENT = "glue"  # the experiment name in the generated file: runs land in <task>/glue/seed<k>
RECIPE = {"lr": 2e-5, "batch_size": 32, "epochs": 3.0, "max_length": 128}  # run_glue.py's defaults


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task in the table: its columns as (header, eval split, metric), and how seeds combine."""

    name: str  # the task registry's name
    columns: Tuple[Tuple[str, str, str], ...]
    max_over_seeds: bool  # small, noisy tasks: the best seed; others: the mean


GLUE: Tuple[GlueTask, ...] = (
    GlueTask("cola", (("CoLA MCC", "dev", "matthews_corrcoef"),), True),
    GlueTask("mnli", (("MNLI m", "dev_matched", "accuracy"), ("MNLI mm", "dev_mismatched", "accuracy")), False),
    GlueTask("mrpc", (("MRPC F1", "dev", "f1"), ("MRPC acc", "dev", "accuracy")), True),
    GlueTask("qnli", (("QNLI acc", "dev", "accuracy"),), False),
    GlueTask("qqp", (("QQP acc", "dev", "accuracy"), ("QQP F1", "dev", "f1")), False),
    GlueTask("rte", (("RTE acc", "dev", "accuracy"),), True),
    GlueTask("sst2", (("SST-2 acc", "dev", "accuracy"),), False),
    GlueTask("stsb", (("STS-B Pearson", "dev", "pearson"), ("STS-B Spearman", "dev", "spearman")), True),
    GlueTask("wnli", (("WNLI acc", "dev", "accuracy"),), True),
)
NOT_IN_MAIN_AVERAGE = "wnli"


def present_tasks(data_dir: Optional[str]) -> List[str]:
    """The GLUE tasks whose train file and every dev split are in `data_dir`."""
    from nanoft.tasks import get_task

    found = []
    for glue in GLUE:
        task = get_task(glue.name)
        try:
            for split in ("train", *task.eval_splits):
                task.resolve(data_dir, split)
        except DataError:
            continue
        found.append(glue.name)
    return found


def model_label(model: str) -> str:
    """A folder name for a model's runs: its path without separators."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(model).strip("/")).strip("_") or "model"


def write_plan(path: Path, model: str, tasks: Sequence[str], seeds: Sequence[int], options: Dict[str, Any]) -> None:
    """The experiment file `nanoft run` replays: every task x seed with one recipe."""
    from nanoft.io import atomic_write_text
    from nanoft.train.config import to_toml

    defaults = {**RECIPE, **options, "model": model}
    top = {"seeds": [int(s) for s in seeds], "tasks": list(tasks), "output_root": path.parent.as_posix()}
    text = (f"# nanoft glue: {model} on {', '.join(tasks)}\n{to_toml(top)}\n[defaults]\n{to_toml(defaults)}\n"
            f"[experiments.{EXPERIMENT}]\n")
    atomic_write_text(path, text)


def resolve_model(model: str) -> str:
    """A model directory: a run directory (pretraining or fine-tuning) stands for its best model."""
    from nanoft.train.rundir import RunDir

    return str(RunDir(model).model_dir()) if RunDir(model).is_run() else str(model)


def run_model(model: str, output_root: str, seeds: Sequence[int], data_dir: Optional[str] = None,
              options: Optional[Dict[str, Any]] = None) -> Tuple[Path, List[str], List[str]]:
    """Fine-tune `model` on every GLUE task present, each seed; returns (its runs folder, the tasks run, failures)."""
    from nanoft.experiment import run_experiments

    model = resolve_model(model)
    options = dict(options or {})
    if data_dir:
        options["data_dir"] = data_dir
    tasks = present_tasks(options.get("data_dir"))
    root = Path(output_root) / model_label(model)
    if not tasks:
        return root, [], []
    plan = root / "glue.toml"
    write_plan(plan, model, tasks, seeds, options)
    summary = run_experiments(str(plan))
    return root, tasks, summary["failed"]


# ------------------------------------------------------------------------------ the table
def run_scores(result: Dict[str, Any], select: str = "final") -> Dict[str, Dict[str, float]]:
    """{split: {metric: value}} of one run: its last evaluation ("final") or its best one ("best")."""
    best = (result.get("best") or {}).get("metrics")
    final = result.get("final")
    scores = best if select == "best" or not final else final
    return scores or {}


def collect_runs(root: Path, select: str = "final") -> Dict[str, List[Dict[str, Dict[str, float]]]]:
    """{task: [scores of each seed's run]} from `root/<task>/glue/seed<k>/results.json`."""
    from nanoft.train.rundir import RunDir

    runs: Dict[str, List[Dict[str, Dict[str, float]]]] = {}
    for glue in GLUE:
        folder = root / glue.name / EXPERIMENT
        if not folder.is_dir():
            continue
        for seed_dir in sorted(folder.glob("seed*")):
            run = RunDir(seed_dir)
            if run.has_results():
                runs.setdefault(glue.name, []).append(run_scores(run.read_results(), select))
    return runs


def _metrics(glue: GlueTask, scores: Dict[str, Dict[str, float]]) -> List[float]:
    """The task's table metrics of one run, x100."""
    return [100.0 * float(scores[split][metric]) for _, split, metric in glue.columns]


def combine(glue: GlueTask, runs: List[Dict[str, Dict[str, float]]], rule: str) -> Tuple[List[float], float]:
    """(the task's metrics, its score) over seeds. rule "glue": max for the small tasks (the seed with the best
    score), mean for the others; "mean": the mean; "std": the sample std of each metric and of the score."""
    per_run = [_metrics(glue, r) for r in runs]
    scores = [sum(m) / len(m) for m in per_run]
    if rule == "glue" and glue.max_over_seeds:
        best = max(range(len(runs)), key=lambda i: scores[i])
        return per_run[best], scores[best]
    columns = list(zip(*per_run)) + [tuple(scores)]
    if rule == "std":
        stats = [_std(c) for c in columns]
    else:
        stats = [sum(c) / len(c) for c in columns]
    return stats[:-1], stats[-1]


def _std(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def table_row(runs: Dict[str, List[Dict[str, Dict[str, float]]]], rule: str) -> Dict[str, Any]:
    """One row of the table: {header: value or None (absent)}, averages and their task counts included."""
    row: Dict[str, Any] = {}
    task_scores: Dict[str, float] = {}
    for glue in GLUE:
        if glue.name not in runs:
            row.update({header: None for header, _, _ in glue.columns})
            continue
        metrics, score = combine(glue, runs[glue.name], rule)
        row.update({header: value for (header, _, _), value in zip(glue.columns, metrics)})
        task_scores[glue.name] = score
    main = [s for name, s in task_scores.items() if name != NOT_IN_MAIN_AVERAGE]
    if rule == "std":  # the std of an average is not the average of stds: left out
        row["avg w/o WNLI"] = row["avg all"] = None
    else:
        row["avg w/o WNLI"] = sum(main) / len(main) if main else None
        row["avg all"] = sum(task_scores.values()) / len(task_scores) if task_scores else None
    row["_tasks"] = (len(main), len(task_scores))
    row["_seeds"] = {name: len(r) for name, r in runs.items()}
    return row


COLUMNS = ["avg w/o WNLI", "avg all"] + [header for glue in GLUE for header, _, _ in glue.columns]


def render(rows: List[Tuple[str, Dict[str, Any], Optional[float]]], fmt: str = "markdown") -> str:
    """The GLUE table: (model label, table_row, perplexity or None) per line."""
    csv = fmt == "csv"
    header = ["model"] + COLUMNS + ["perplexity"] + (["tasks_w/o_WNLI", "tasks_all"] if csv else [])
    if not csv:
        main, total = rows[0][1]["_tasks"] if rows else (0, 0)
        header[1] = f"avg w/o WNLI ({main}/8 tasks)"
        header[2] = f"avg all ({total}/9 tasks)"
    body = []
    for label, row, perplexity in rows:
        cells = [label]
        for column in COLUMNS:
            value = row[column]
            absent = value is None and not column.startswith("avg")
            cells.append(ABSENT if absent else ("" if csv else "-") if value is None else
                         (f"{value:.6g}" if csv else f"{value:.1f}"))
        if perplexity is None:
            cells.append("" if csv else "-")
        else:
            cells.append(f"{perplexity:.6g}" if csv else f"{perplexity:.2f}")
        if csv:
            cells += [str(n) for n in row["_tasks"]]
        body.append(cells)
    return render_table(header, body, fmt, right=[False] + [True] * (len(header) - 1))


def model_perplexity(model: str, text_file: Optional[str], max_length: int, dev_tasks: Optional[str] = None,
                     data_dir: Optional[str] = None) -> Optional[float]:
    """Masked-LM perplexity on `text_file`, or on the held-out texts of `dev_tasks` (what `nanoft pretrain --task`
    on those tasks evaluates), with the fixed seeded mask of `nanoft eval --objective mlm`; None for a
    checkpoint without a masked-LM head (a random head's perplexity would mean nothing)."""
    from nanoft.train.corpus import task_documents
    from nanoft.train.pretrain import evaluate_documents, evaluate_text
    from nanoft.weights import load_model

    directory = resolve_model(model)
    _, report = load_model(directory, head="masked-lm", return_report=True)
    if any(name.startswith("head.") for name in report.initialised):
        log.warning("%s has no masked-LM head: no perplexity", model)
        return None
    if text_file:
        return evaluate_text(directory, text_file, max_length)["perplexity"]
    texts, pairs = task_documents(dev_tasks or "", data_dir, "held-out")
    return evaluate_documents(directory, texts, pairs, max_length, source=f"held-out texts of {dev_tasks}")["perplexity"]


def glue_report(models: Sequence[str], output_root: str = "runs/glue", seeds: Sequence[int] = (1, 2, 3),
                data_dir: Optional[str] = None, options: Optional[Dict[str, Any]] = None,
                dev_text: Optional[str] = None, select: str = "final", fmt: str = "markdown",
                run: bool = True, dev_tasks: Optional[str] = None) -> Dict[str, Any]:
    """Run (unless `run=False`) and tabulate: {"markdown", "csv", "failed", "rows"} for `nanoft glue`."""
    if select not in ("final", "best"):
        raise ConfigError(f"--select {select!r}", fix="use final or best")
    if not seeds:
        raise ConfigError("no seeds given", fix="e.g. --seeds 1,2,3")
    if dev_text and dev_tasks:
        raise ConfigError("both --dev-text and --dev-tasks given", fix="use one of them")
    if dev_tasks:
        from nanoft.train.pretrain import PretrainConfig

        try:  # unknown or repeated names: one line, with glue's own way out
            PretrainConfig(task=dev_tasks, data_dir=data_dir).check_data()
        except ConfigError as error:
            raise ConfigError(f"--dev-tasks: {error.message}",
                              fix="or measure perplexity on your own text with --dev-text FILE") from None
    lines: List[Tuple[str, Dict[str, Any], Optional[float]]] = []
    failed: List[str] = []
    max_length = int((options or {}).get("max_length", RECIPE["max_length"]))
    for model in models:
        if run:
            root, tasks, errors = run_model(model, output_root, seeds, data_dir, options)
            failed += errors
        else:
            root = Path(output_root) / model_label(resolve_model(model))
        runs = collect_runs(root, select)
        if not runs:
            raise DataError("no GLUE task ran: none has train and dev files in the data folder",
                            path=str(data_dir or "$NANOFT_DATA_DIR"),
                            fix="pass --data-dir DIR holding e.g. sst2/train.tsv and sst2/dev.tsv")
        perplexity = model_perplexity(model, dev_text, max_length, dev_tasks, data_dir) \
            if dev_text or dev_tasks else None
        lines.append((model, table_row(runs, "glue"), perplexity))
        lines.append((f"{model} (mean over seeds)", table_row(runs, "mean"), None))
        lines.append((f"{model} (std over seeds)", table_row(runs, "std"), None))
    return {"markdown": render(lines, "markdown"), "csv": render(lines, "csv"), "table": render(lines, "table"),
            "failed": failed, "rows": lines}


def parse_options(items: Sequence[str]) -> Dict[str, Any]:
    """--option KEY=VALUE items as TrainConfig values (numbers and true/false parsed); unknown keys rejected."""
    import dataclasses

    from nanoft.train.config import TrainConfig, parse_scalar

    values: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--option {item!r} is not KEY=VALUE", fix="e.g. --option warmup=0.1")
        key, raw = (x.strip() for x in item.split("=", 1))
        values[key] = parse_scalar(raw)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in values:
        if key not in names or key in ("task", "model", "seed", "output"):
            raise ConfigError(f"--option {key}: not a run option nanoft glue passes on",
                              fix="use a `nanoft train` option name with _, e.g. --option warmup=0.1")
    return values


__all__ = ["GLUE", "GlueTask", "glue_report", "present_tasks", "table_row", "combine", "collect_runs", "render"]
