"""What the CLI commands do, as plain typed functions returning text (the CLI only prints it)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from nanoft.errors import CheckpointError, ConfigError, DataError, NanoftError


def describe_model(path: Optional[str]) -> str:
    """`nanoft info`: a checkpoint, or a run directory's model (best/, else its latest checkpoint)."""
    from nanoft.weights import load_model, load_tokenizer, model_summary

    run_config = None
    if path is not None and Path(path).is_dir():
        model_dir, run_config = _run_or_model(path)
        path = str(model_dir)
    model, report = load_model(path, head=None, return_report=True)
    s = model_summary(model)
    lines = [
        f"model:      {report.path}" + (f"  (run of {run_config.get('model') or 'the default model'})"
                                        if run_config is not None else ""),
        f"family:     {s['family']}  ({s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, "
        f"ffn {s['intermediate']}, vocab {s['vocab']}, max length {s['max_length']})",
        f"attention:  {s['attention']}",
        f"parameters: {s['parameters']:,} ({s['dtype']})",
        f"tensors:    {report.summary()}",
    ]
    try:
        tok = _tokenizer_for(Path(path), run_config) if run_config is not None else load_tokenizer(path)
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
    lines.append(f"train:      {results['steps']} steps on {results['train_examples']:,} training examples, "
                 f"{results['train_seconds']:.1f} s, {results['examples_per_s']:.1f} ex/s, "
                 f"precision {results['precision']}, peak memory {results['peak_memory_mb']:.0f} MiB")
    if results.get("train_flops_per_s"):
        lines.append(f"flops:      {results['train_flops_per_s'] / 1e9:.3g} GFLOP/s achieved (model FLOPs of the real "
                     f"tokens)" + (f", {results['flop_utilisation']:.2%} of this CPU's {results['precision']} matmul "
                                   f"peak {results['peak_flops_per_s'] / 1e9:.0f} GFLOP/s"
                                   if results.get("flop_utilisation") else ""))
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


def _model_config(model_dir: Path) -> Dict[str, Any]:
    """The model directory's config.json (labels, problem type), or one line saying it is not a model."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise CheckpointError("no config.json: not a run or model directory", path=str(model_dir),
                              fix="pass a run directory (nanoft train --output) or a Hugging Face model directory")
    return json.loads(config_file.read_text(encoding="utf-8"))


def _load_trained(model_dir: Path, config: Dict[str, Any], head: str, max_length: Optional[int],
                  num_labels: Optional[int] = None, task_name: Optional[str] = None) -> Any:
    """The model with its fine-tuned head, for evaluation or prediction (`config`: its `_model_config`).
    Refused: a label count other than the model's, a head the checkpoint lacks (it would be random, and so
    would every prediction), a --max-length beyond the model's positions."""
    from nanoft.weights import load_model

    saved = config.get("id2label") or {}
    if num_labels is not None and head == "classification" and saved and len(saved) != num_labels:
        raise ConfigError(f"the model predicts {len(saved)} labels but task {task_name} has {num_labels}",
                          path=str(model_dir), fix="evaluate it on the task it was trained on (leave out --task)")
    model, report = load_model(model_dir, head=head, num_labels=num_labels, return_report=True)
    untrained = [name for name in report.initialised if name.startswith("head.")]
    if untrained:
        raise CheckpointError(f"the model has no trained {head} head ({', '.join(untrained[:2])} not in the "
                              "checkpoint): its outputs would be random", path=str(model_dir),
                              fix="fine-tune it first (nanoft train --model ...) and pass the run directory")
    if max_length is not None and max_length > model.config.max_length:
        raise ConfigError(f"--max-length {max_length} is longer than the model's {model.config.max_length} positions",
                          fix=f"use --max-length {model.config.max_length} or less")
    return model


def _max_length(given: Optional[int], run_config: Optional[Dict[str, Any]], model: Any) -> int:
    """--max-length, else the run's, else 128 capped at the model's positions."""
    return given or (run_config or {}).get("max_length") or min(128, model.config.max_length)


def evaluate_path(path: str, task_name: Optional[str], split: Optional[str], data_dir: Optional[str],
                  batch_size: int, max_length: Optional[int]) -> str:
    from nanoft.data import encode
    from nanoft.train.evaluate import predict_logits, score
    from nanoft.weights import Truncation

    model_dir, run_config = _run_or_model(path)
    task = _task_for(run_config, task_name, model_dir)
    data_dir = data_dir or (run_config or {}).get("data_dir")
    head = "regression" if task.is_regression else "classification"
    model = _load_trained(model_dir, _model_config(model_dir), head, max_length, task.num_labels, task.name)
    max_length = _max_length(max_length, run_config, model)
    tokenizer = _tokenizer_for(model_dir, run_config)
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
    """For each row of `input_file`, in order: its index, its line in the file (a .txt skips blank lines; Parquet and
    Arrow count rows from 1), the predicted label, its id and every class probability (or the predicted value of a
    regression), then the input's text column(s)."""
    from nanoft.data import encode
    from nanoft.tasks import Examples
    from nanoft.train.evaluate import predict_logits
    from nanoft.weights import Truncation

    model_dir, run_config = _run_or_model(path)
    if output_file is not None and Path(output_file).suffix.lower() not in (".csv", ".tsv", ".jsonl"):
        raise ConfigError(f"cannot write predictions as {Path(output_file).suffix or 'a file without extension'}",
                          path=output_file, fix="name the output .csv, .tsv or .jsonl")
    config = _model_config(model_dir)
    id2label = config.get("id2label") or {}
    regression = config.get("problem_type") == "regression"
    task = None
    if run_config is not None:
        try:
            task = _task_for(run_config, None, model_dir)
        except ConfigError:
            task = None
    table = _read_input(input_file, no_header)
    columns = _predict_columns(table, list(text_columns), None if text_columns else task)
    if task is not None and task.is_pair and len(columns) != 2:
        raise ConfigError(f"the run was trained on sentence pairs ({' + '.join(map(str, task.text_columns))}), "
                          f"but the input gives one text column ({columns[0]!r})", path=input_file,
                          fix="give both columns: --text-column A --text-column B")
    texts = table.column(columns[0])
    pairs = table.column(columns[1]) if len(columns) > 1 else None
    n = len(texts)
    examples = Examples(texts=texts, text_pairs=pairs, labels=None, lines=np.asarray(table.lines, dtype=np.int64),
                        source=str(input_file), fingerprint="")
    model = _load_trained(model_dir, config, "regression" if regression else "classification", max_length)
    max_length = _max_length(max_length, run_config, model)
    tokenizer = _tokenizer_for(model_dir, run_config)
    data = encode(examples, tokenizer, max_length, use_cache=False,
                  truncation=Truncation.from_config(run_config or {}))  # cut long texts as the run did
    logits = predict_logits(model, data, tokenizer.pad_token_id, batch_size)
    records = []
    if regression:
        for i in range(n):
            records.append({"index": i, "line": int(table.lines[i]), "prediction": float(logits[i])})
    else:
        probs = torch.softmax(logits, dim=-1)
        names = [id2label.get(str(j), str(j)) for j in range(probs.shape[1])]
        for i in range(n):
            j = int(probs[i].argmax())
            rec = {"index": i, "line": int(table.lines[i]), "label": names[j], "label_id": j}
            rec.update({f"p_{name}": round(float(probs[i, k]), 6) for k, name in enumerate(names)})
            records.append(rec)
    inputs = [texts] + ([pairs] if pairs is not None else [])
    for name, values in zip(_output_names(table, columns, list(records[0]) if records else []), inputs):
        for rec, value in zip(records, values):
            rec[name] = value
    return _write_records(records, output_file)


def _tsv_cell(value: Any) -> str:
    return " ".join(str(value).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "\n").split("\n"))


def _write_records(records: List[Dict[str, Any]], output_file: Optional[str],
                   fields: Optional[List[str]] = None) -> str:
    """Predictions as JSONL, CSV or TSV (by the output's extension; stdout: TSV). Table columns: `fields`, else the
    first record's keys; empty where a record lacks one. A JSONL record keeps only its own keys."""
    fmt = "tsv" if output_file is None else Path(output_file).suffix.lstrip(".").lower()
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        buf = io.StringIO()
        fields = fields or (list(records[0]) if records else ["index"])
        if fmt == "csv":
            writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", restval="")
            writer.writeheader()
            writer.writerows(records)
        else:  # TSV as nanoft (and GLUE) read it: no quoting, so a tab or line break inside a cell becomes a space
            buf.write("\t".join(map(_tsv_cell, fields)) + "\n")
            for record in records:
                buf.write("\t".join(_tsv_cell(record.get(name, "")) for name in fields) + "\n")
        text = buf.getvalue()
    if output_file:
        from nanoft.io import atomic_write_text

        atomic_write_text(output_file, text)
        return f"wrote {len(records)} predictions to {output_file}\n"
    return text


# ------------------------------------------------------------------------------ many adapters, one base
def _adapter_specs(specs: List[str]) -> Dict[str, str]:
    """{name: directory} from `--adapter NAME=DIR` values."""
    out: Dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not name.strip() or not directory.strip():
            raise ConfigError(f"--adapter {spec!r} is not NAME=DIR", fix="e.g. --adapter sst2=runs/sst2")
        if name.strip() in out:
            raise ConfigError(f"--adapter {name.strip()!r} is given twice", fix="give each adapter its own name")
        out[name.strip()] = directory.strip()
    return out


def _adapter_source(directory: str) -> Tuple[Path, Optional[Path]]:
    """(adapter folder, its run directory or None) for a run, a run's model folder (RUN/best) or an adapter folder."""
    from nanoft.peft import CONFIG_NAME
    from nanoft.train.rundir import RunDir

    path = Path(directory)
    for candidate, run in ((path / "best" / "adapter", path), (path / "adapter", path.parent),
                           (path, path.parent.parent)):
        if (candidate / CONFIG_NAME).is_file():
            return candidate, run if RunDir(run).is_run() else None
    raise ConfigError(f"no adapter found (a run trained with --peft, its best/ folder, or a folder with {CONFIG_NAME})",
                      path=str(path), fix="pass --adapter NAME=RUN_DIR of a `nanoft train --peft` run")


def _adapter_labels(adapter_dir: Path, run: Optional[Path]) -> Optional[List[str]]:
    """The adapter's label names: its run's task.json, else the merged model's config.json beside it."""
    from nanoft.train.rundir import RunDir

    info = RunDir(run).read_task() if run is not None else None
    if info and info.get("label_names"):
        return list(info["label_names"])
    config_file = adapter_dir.parent / "config.json"
    if config_file.is_file():
        id2label = json.loads(config_file.read_text(encoding="utf-8")).get("id2label") or {}
        if id2label:
            return [id2label[str(j)] for j in range(len(id2label))]
    return None


def predict_adapters_file(base: str, adapters: List[str], adapter_column: Optional[str], input_file: str,
                          output_file: Optional[str], text_columns: List[str], no_header: bool, batch_size: int,
                          max_length: Optional[int]) -> str:
    """`predict_file` with several adapters on one base: each row goes through the adapter its `adapter_column`
    names (with that adapter's head, labels, text columns and max length), all in mixed batches. Records as
    `predict_file`'s plus an `adapter` column; a table's p_<label> columns are the union, empty for other
    adapters' labels."""
    from nanoft.data import EvalBatchSampler, collate, encode
    from nanoft.peft.multi import MultiAdapterModel
    from nanoft.tasks import Examples, Task
    from nanoft.tasks.files import Table
    from nanoft.train.rundir import RunDir
    from nanoft.weights import Truncation, load_model, load_tokenizer

    specs = _adapter_specs(adapters)
    base_path = Path(base)
    if (base_path / "adapter").is_dir() or (RunDir(base_path).is_run() and (base_path / "best" / "adapter").is_dir()):
        raise ConfigError("the base is a `train --peft` run or model, whose weights have an adapter merged in",
                          path=str(base_path), fix="pass the base checkpoint the adapters were trained from")
    if RunDir(base_path).is_run():
        raise ConfigError("the base is a run directory (fully fine-tuned weights, not the checkpoint adapters are "
                          "trained from)", path=str(base_path),
                          fix="pass the base checkpoint the adapters were trained from, or drop --adapter to predict "
                              "with this run")
    table = _read_input(input_file, no_header)
    if adapter_column is None:
        if len(specs) > 1:
            raise ConfigError(f"{len(specs)} adapters: which column names each row's adapter?",
                              fix="pass --adapter-column COLUMN")
        row_names = [next(iter(specs))] * len(table.rows)
    else:
        if table.header is not None and adapter_column not in table.header:
            raise DataError(f"no adapter column {adapter_column!r}; columns found: "
                            f"{', '.join(repr(c) for c in table.header)}", path=table.path, line=table.header_line,
                            fix="pass --adapter-column with the column that names each row's adapter")
        row_names = [v.strip() for v in table.column(adapter_column)]  # --no-header: a 0-based position
        for i, name in enumerate(row_names):
            if name not in specs:
                raise DataError(f"adapter {name!r} (column {adapter_column!r}) was not loaded; loaded: "
                                f"{', '.join(specs)}", path=table.path, line=int(table.lines[i]),
                                fix=f"add --adapter {name or 'NAME'}=DIR")
        if table.header is not None:  # the adapter column is not a text column
            keep = [k for k, c in enumerate(table.header) if c != adapter_column]
            table = Table(table.path, table.format, [table.header[k] for k in keep],
                          [[row[k] for k in keep] for row in table.rows], table.lines, table.sha256, table.header_line)

    model = MultiAdapterModel(load_model(base, head=None))
    sources = {name: _adapter_source(directory) for name, directory in specs.items()}
    try:
        tokenizer = load_tokenizer(base_path)
    except NanoftError:  # a base without tokenizer files: the one saved with the first adapter's run
        tokenizer = load_tokenizer(next(iter(sources.values()))[0].parent)
    labels: Dict[str, Optional[List[str]]] = {}
    datasets: Dict[str, Any] = {}
    columns_of: Dict[str, List[Any]] = {}
    for name, (adapter_dir, run) in sources.items():  # every adapter given is loaded and checked, used or not
        labels[name] = _adapter_labels(adapter_dir, run)
        model.load_adapter(name, adapter_dir, labels[name])
        run_config = RunDir(run).read_config() if run is not None else {}
        info = RunDir(run).read_task() if run is not None else None
        task = Task.from_dict(info["task"]) if info and isinstance(info.get("task"), dict) else None
        rows = [i for i, n in enumerate(row_names) if n == name]
        if not rows:
            continue
        columns_of[name] = _predict_columns(table, list(text_columns), task)
        texts = table.column(columns_of[name][0])
        pairs = table.column(columns_of[name][1]) if len(columns_of[name]) > 1 else None
        examples = Examples(texts=[texts[i] for i in rows],
                            text_pairs=[pairs[i] for i in rows] if pairs is not None else None, labels=None,
                            lines=np.asarray(table.lines, dtype=np.int64)[rows],
                            source=str(input_file), fingerprint="")
        datasets[name] = (rows, encode(examples, tokenizer, max_length or run_config.get("max_length") or 128,
                                       use_cache=False, truncation=Truncation.from_config(run_config)))

    n = len(row_names)
    local = np.zeros(n, dtype=np.int64)  # each row's position in its adapter's dataset
    lengths = np.zeros(n, dtype=np.int64)
    for name, (rows, data) in datasets.items():
        local[rows] = np.arange(len(rows))
        lengths[rows] = data.lengths
    results: List[Optional[torch.Tensor]] = [None] * n
    model.eval()
    with torch.no_grad():
        for batch in EvalBatchSampler(lengths, batch_size):
            parts = {name: [i for i in batch if row_names[i] == name]
                     for name in dict.fromkeys(row_names[i] for i in batch)}  # the batch's rows, by adapter
            order = [i for ix in parts.values() for i in ix]
            tensors = [collate(datasets[name][1], local[ix], tokenizer.pad_token_id) for name, ix in parts.items()]
            width = max(t["input_ids"].shape[1] for t in tensors)
            stacked = {key: torch.cat([torch.nn.functional.pad(t[key], (0, width - t[key].shape[1]),
                                                               value=tokenizer.pad_token_id if key == "input_ids"
                                                               else 0) for t in tensors])
                       for key in ("input_ids", "attention_mask", "token_type_ids")}
            logits = model(stacked["input_ids"], attention_mask=stacked["attention_mask"],
                           token_type_ids=stacked["token_type_ids"], adapter_names=[row_names[i] for i in order])
            for i, row in zip(order, model.row_logits(logits, [row_names[i] for i in order])):
                results[i] = row

    records = []
    for i, (name, row) in enumerate(zip(row_names, results)):
        rec: Dict[str, Any] = {"index": i, "line": int(table.lines[i]), "adapter": name}
        if model.head_kinds[name] == "regression":
            rec["prediction"] = float(row[0])
        else:
            probs = torch.softmax(row, dim=-1)
            names = labels[name] or [str(j) for j in range(len(probs))]
            j = int(probs.argmax())
            rec.update({"label": names[j], "label_id": j})
            rec.update({f"p_{label}": round(float(probs[k]), 6) for k, label in enumerate(names)})
        records.append(rec)
    predicted = list(dict.fromkeys(k for r in records for k in r))  # the union, in first-seen order
    used_columns = list(dict.fromkeys(c for name in datasets for c in columns_of[name]))
    texts = _output_names(table, used_columns, predicted)
    for out_name, c in zip(texts, used_columns):
        for rec, value in zip(records, table.column(c)):
            rec[out_name] = value
    return _write_records(records, output_file, predicted + texts)
