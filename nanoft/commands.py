"""What the CLI commands do, as plain typed functions returning text (the CLI only prints it)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from nanoft.errors import ConfigError, DataError


def describe_model(path: Optional[str]) -> str:
    from nanoft.weights import load_model, load_tokenizer, model_summary

    model, report = load_model(path, head=None, return_report=True)
    s = model_summary(model)
    lines = [
        f"model:      {report.path}",
        f"family:     {s['family']}  ({s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, "
        f"ffn {s['intermediate']}, vocab {s['vocab']}, max length {s['max_length']})",
        f"attention:  {s['attention']}",
        f"parameters: {s['parameters']:,} ({s['dtype']})",
        f"tensors:    {report.summary()}",
    ]
    try:
        tok = load_tokenizer(path)
        lines.append(f"tokenizer:  {tok.kind} ({tok.family}, vocab {tok.vocab_size}, pad id {tok.pad_token_id})")
    except Exception as e:  # a model without tokenizer files is still describable
        lines.append(f"tokenizer:  none ({e})")
    directory = Path(report.path)
    adapter_config = (directory if directory.is_dir() else directory.parent) / "adapter" / "adapter_config.json"
    if adapter_config.is_file():
        size = (adapter_config.parent / "adapter.safetensors").stat().st_size
        lines.append(f"adapter:    {adapter_config.parent} ({size / 1024:.1f} KiB)")
    from nanoft.sparse import describe_sparsity

    lines += describe_sparsity(model, directory if directory.is_dir() else directory.parent)
    return "\n".join(lines)


def describe_task(name: str, data_dir: Optional[str], model_path: Optional[str], max_length: int,
                  batch_size: int) -> str:
    from nanoft.data import describe
    from nanoft.tasks import get_task
    from nanoft.weights import load_tokenizer

    return describe(get_task(name), data_dir, load_tokenizer(model_path), max_length, batch_size)


def _fmt_metrics(metrics: Optional[Dict[str, Any]]) -> str:
    if not metrics:
        return "-"
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))


def train_and_report(config) -> str:
    from nanoft.train import Trainer

    trainer = Trainer(config)
    results = trainer.fit()
    if not trainer.dist.is_main:
        return ""
    lines = [f"run:        {trainer.run_dir}"]
    best = results.get("best")
    if best:
        for split, metrics in best["metrics"].items():
            lines.append(f"best {split}:  {_fmt_metrics(metrics)} (step {best['step']})")
    if results.get("test"):
        lines.append(f"test:       {_fmt_metrics(results['test'])}")
    if results.get("swa"):
        lines.append(f"swa:        {_fmt_metrics(results['swa'])}")
    lines.append(f"train:      {results['steps']} steps, {results['train_examples']:,} examples, "
                 f"{results['train_seconds']:.1f} s, {results['examples_per_s']:.1f} ex/s, "
                 f"precision {results['precision']}, peak memory {results['peak_memory_mb']:.0f} MiB")
    lines.append(f"parameters: {results['trainable_parameters']:,} trainable of {results['parameters']:,}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ runs and models
def _run_or_model(path: str) -> Tuple[Path, Optional[Dict[str, Any]]]:
    """(model directory, the run's resolved config or None) for a run directory or a model directory."""
    from nanoft.train.rundir import RunDir

    run = RunDir(path)
    if not run.path.exists():
        raise ConfigError("run or model directory does not exist", path=str(run.path))
    if run.is_run():
        return run.model_dir(), run.read_config()
    return run.path, None


def _tokenizer_for(model_dir: Path, run_config: Optional[Dict[str, Any]]):
    """The tokenizer saved with the model, else the one of the run's base model."""
    from nanoft.weights import load_tokenizer

    has_own = (model_dir / "tokenizer.json").is_file()
    return load_tokenizer(model_dir if has_own else (run_config or {}).get("model"))


def _task_for(run_config: Optional[Dict[str, Any]], task_name: Optional[str], model_dir: Path):
    from nanoft.tasks import Task, get_task

    if task_name:
        return get_task(task_name)
    if run_config is not None:
        from nanoft.train.rundir import RunDir

        info = RunDir(model_dir.parent).read_task()
        if info is not None:
            if isinstance(info.get("task"), dict):
                return Task.from_dict(info["task"])
        if run_config.get("task"):
            return get_task(run_config["task"])
    raise ConfigError("which task? this is not a run directory", fix="pass --task NAME")


def evaluate_path(path: str, task_name: Optional[str], split: Optional[str], data_dir: Optional[str],
                  batch_size: int, max_length: Optional[int]) -> str:
    from nanoft.data import encode
    from nanoft.train.evaluate import predict_logits, score
    from nanoft.weights import Truncation, load_model

    model_dir, run_config = _run_or_model(path)
    task = _task_for(run_config, task_name, model_dir)
    data_dir = data_dir or (run_config or {}).get("data_dir")
    max_length = max_length or (run_config or {}).get("max_length") or 128
    tokenizer = _tokenizer_for(model_dir, run_config)
    head = "regression" if task.is_regression else "classification"
    model = load_model(model_dir, head=head, num_labels=task.num_labels)
    rows = []
    for name in ([split] if split else list(task.eval_splits)):
        data = encode(task.load(data_dir, name), tokenizer, max_length,
                      truncation=Truncation.from_config(run_config or {}))  # the run's strategy
        if data.labels is None:
            raise DataError(f"split {name!r} has no labels to evaluate against", fix="choose a labelled split")
        metrics = score(task, predict_logits(model, data, tokenizer.pad_token_id, batch_size), data.labels)
        rows.append(f"{task.name} {name} ({len(data)} examples): {_fmt_metrics(metrics)}")
    return "\n".join(rows)


def _read_input(input_file: str, no_header: bool):
    """The input table of `predict`: a .txt file is one text per line; other files as `read_table` reads them."""
    from nanoft.tasks.files import read_lines, read_table

    if Path(input_file).suffix.lower() == ".txt":
        return read_lines(input_file)
    return read_table(input_file, has_header=not no_header)


def _has_columns(table, columns) -> bool:
    """Whether `table` has every column: names in its header; positions only in a file read without a header
    (a headerless run's position says nothing about a file whose header names its columns)."""
    if table.header is None:
        return all(isinstance(c, int) and c < table.width for c in columns)
    return all(isinstance(c, str) and c in table.header for c in columns)


def _is_text(values: List[str]) -> bool:
    """A column holds text when some value is neither empty nor a number (ids and labels are numbers)."""
    for value in values:
        try:
            float(value)
        except ValueError:
            if value.strip():
                return True
    return False


def _predict_columns(table, asked: List[str], task) -> List[Any]:
    """The text column(s) to predict on: --text-column; else the run's when the input has them; else the input's
    column `text`, or its only column, or its only column holding text; else a DataError naming what was found."""
    if asked:
        if table.header is None and not all(c.strip().isdigit() for c in asked):
            raise ConfigError(f"--text-column {asked[0]!r}: --no-header files have no column names",
                              fix="give columns as 0-based positions, e.g. --text-column 0")
        columns: List[Any] = [int(c) if table.header is None else c for c in asked]
        for c in columns:
            table.column_index(c)  # a missing column lists the columns found
        return columns
    if task is not None:
        layouts = [tuple(task.text_columns)]
        if task.headerless is not None:
            layouts.append(tuple(task.headerless.text_columns))
        for layout in layouts:
            if _has_columns(table, layout):
                return list(layout)
    names = list(table.header) if table.header is not None else list(range(table.width))
    if "text" in names:
        return ["text"]
    texts = [c for c in names if _is_text([row[names.index(c)] for row in table.rows])]
    if task is None or not task.is_pair:
        if len(names) == 1:
            return names
        if len(texts) == 1:
            return texts
    found = ", ".join(repr(c) for c in names) if table.header is not None else f"0..{table.width - 1} (no header)"
    what = (f"the run reads sentence pairs from columns {', '.join(map(repr, task.text_columns))}, which the "
            "input lacks" if task is not None and task.is_pair else "which column holds the text?")
    raise DataError(f"{what} columns found: {found}", path=table.path,
                    fix="pass --text-column (twice for sentence pairs)")


def _output_names(table, columns: List[Any], taken: List[str]) -> List[str]:
    """Names of the input's text columns in the predictions file (never one of the prediction columns)."""
    names = []
    for k, c in enumerate(columns):
        name = table.header[table.column_index(c)] if table.header is not None else ("text", "text_pair")[k]
        names.append(f"input_{name}" if name in taken or name in names else name)
    return names


def predict_file(path: str, input_file: str, output_file: Optional[str], text_columns: List[str], no_header: bool,
                 batch_size: int, max_length: Optional[int]) -> str:
    """For each row of `input_file`, in order: its index, the predicted label, its id and every class
    probability (or the predicted value of a regression), then the input's text column(s)."""
    from nanoft.data import encode
    from nanoft.tasks import Examples
    from nanoft.train.evaluate import predict_logits
    from nanoft.weights import Truncation, load_model

    model_dir, run_config = _run_or_model(path)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    regression = config.get("problem_type") == "regression"
    task = None
    if run_config is not None and not text_columns:
        try:
            task = _task_for(run_config, None, model_dir)
        except ConfigError:
            task = None
    table = _read_input(input_file, no_header)
    columns = _predict_columns(table, list(text_columns), task)
    texts = table.column(columns[0])
    pairs = table.column(columns[1]) if len(columns) > 1 else None
    n = len(texts)
    examples = Examples(texts=texts, text_pairs=pairs, labels=None, lines=np.asarray(table.lines, dtype=np.int64),
                        source=str(input_file), fingerprint="")
    max_length = max_length or (run_config or {}).get("max_length") or 128
    tokenizer = _tokenizer_for(model_dir, run_config)
    data = encode(examples, tokenizer, max_length, use_cache=False,
                  truncation=Truncation.from_config(run_config or {}))  # cut long texts as the run did
    model = load_model(model_dir, head="regression" if regression else "classification")
    logits = predict_logits(model, data, tokenizer.pad_token_id, batch_size)
    records = []
    if regression:
        for i in range(n):
            records.append({"index": i, "prediction": float(logits[i])})
    else:
        probs = torch.softmax(logits, dim=-1)
        names = [id2label.get(str(j), str(j)) for j in range(probs.shape[1])]
        for i in range(n):
            j = int(probs[i].argmax())
            rec = {"index": i, "label": names[j], "label_id": j}
            rec.update({f"p_{name}": round(float(probs[i, k]), 6) for k, name in enumerate(names)})
            records.append(rec)
    inputs = [texts] + ([pairs] if pairs is not None else [])
    for name, values in zip(_output_names(table, columns, list(records[0]) if records else []), inputs):
        for rec, value in zip(records, values):
            rec[name] = value
    fmt = "tsv" if output_file is None else Path(output_file).suffix.lstrip(".").lower()
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(records[0].keys()) if records else ["index"],
                                delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buf.getvalue()
    if output_file:
        from nanoft.io import atomic_write_text

        atomic_write_text(output_file, text)
        return f"wrote {n} predictions to {output_file}\n"
    return text
