"""A task from the user's own files: `--train-file`, `--dev-file`, `--test-file`
(TSV, CSV, JSONL, Parquet, Arrow).

The label set is inferred from the train file (integer labels sorted by value, names sorted by
name, non-integer numbers mean regression) and saved with the run through `Task.to_dict()`, so
dev/test labels outside that set are errors, not new classes. A missing dev set is carved from
train by a seeded stratified split (default 0.9,0.1; `--split 0.8,0.1,0.1` also carves test).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

from nanoft.tasks.files import Column, detect_format, read_table
from nanoft.errors import ConfigError, DataError
from nanoft.tasks.splits import parse_split
from nanoft.tasks.task import Split, Task, is_int

DEFAULT_SPLIT = (0.9, 0.1)


def _columns(columns: Union[Column, Sequence[Column]], has_header: bool) -> tuple:
    if isinstance(columns, (str, int)):
        columns = (columns,)
    out = []
    for c in columns:
        if not has_header:
            if not (isinstance(c, int) or (isinstance(c, str) and c.strip().isdigit())):
                raise ConfigError(f"column {c!r} is a name but --no-header files have no names",
                                  fix="give columns as 0-based positions, e.g. --text-column 0 --label-column 1")
            c = int(c)
        out.append(c)
    return tuple(out)


def _infer_labels(values: List[str], lines: List[int], path: str, is_regression: Optional[bool]) -> tuple:
    """(label_names, is_regression) from the train file's label values."""
    for value, line in zip(values, lines):
        if not value.strip():
            raise DataError("empty label", path=path, line=line, fix="give every row a label")
    distinct = sorted(set(v.strip() for v in values))
    if is_regression is None:
        numeric = True
        for v in distinct:
            try:
                float(v)
            except ValueError:
                numeric = False
                break
        is_regression = numeric and not all(is_int(v) for v in distinct)
    if is_regression:
        return None, True
    if len(distinct) < 2:
        raise DataError(f"every row has the label {distinct[0]!r}: a classifier needs at least 2 classes", path=path,
                        fix="check --label-column, or give a file with several labels")
    if all(is_int(v) for v in distinct):
        distinct.sort(key=int)
    return distinct, False


def from_files(train_file: Union[str, Path], dev_file: Union[str, Path, None] = None,
               test_file: Union[str, Path, None] = None,
               text_columns: Union[Column, Sequence[Column]] = ("text",), label_column: Column = "label",
               has_header: bool = True, split: Union[str, Sequence[float], None] = None, seed: int = 0, *,
               name: str = "custom", label_names: Optional[List[str]] = None,
               is_regression: Optional[bool] = None, format: Optional[str] = None) -> Task:
    """A `Task` over the user's files; reads train now to check columns and infer the label set."""
    text_columns = _columns(text_columns, has_header)
    (label_column,) = _columns((label_column,), has_header)
    files = {k: str(Path(v).resolve()) for k, v in (("train", train_file), ("dev", dev_file), ("test", test_file))
             if v is not None}
    for path in files.values():
        if not Path(path).is_file():
            raise DataError("file not found", path=path, fix="check the path")
    formats = {detect_format(path) for path in files.values()}
    format = format or (formats.pop() if len(formats) == 1 else None)  # None: each file by its own extension

    fractions = parse_split(split)
    if fractions is not None and "dev" in files:
        raise ConfigError("--split carves dev from the train file, but --dev-file was given too",
                          fix="drop --split or --dev-file")
    if fractions is not None and len(fractions) == 3 and "test" in files:
        raise ConfigError("--split with 3 parts carves test from the train file, but --test-file was given too",
                          fix="use --split train,dev (2 parts) or drop --test-file")
    if fractions is None and "dev" not in files:
        fractions = DEFAULT_SPLIT

    table = read_table(files["train"], format, has_header)
    for c in text_columns:
        table.column_index(c)  # missing columns fail here, listing the columns found
    values = table.column(label_column)
    if label_names is None:
        label_names, is_regression = _infer_labels(values, table.lines, table.path, is_regression)
    else:
        is_regression = False

    splits = {}
    if fractions is None:
        splits["train"] = Split((files["train"],))
    else:
        for k, part in enumerate(("train", "dev", "test")[: len(fractions)]):
            splits[part] = Split((files["train"],), parts=(k,), fractions=tuple(fractions))
    for part in ("dev", "test"):
        if part in files:
            splits[part] = Split((files[part],))

    if is_regression:
        metrics, main = ("pearson", "spearman"), "pearson"
    elif len(label_names) == 2:
        metrics, main = ("accuracy", "f1"), "accuracy"
    else:
        metrics, main = ("accuracy", "f1_macro"), "accuracy"
    task = Task(name=name, text_columns=text_columns, label_column=label_column, label_names=label_names,
                is_regression=bool(is_regression), metrics=metrics, main_metric=main, splits=splits,
                eval_splits=("dev",), format=format, has_header=has_header, label_indices=False, seed=seed,
                description=f"user files: {', '.join(f'{k}={v}' for k, v in files.items())}")
    if fractions is not None:
        task.load(None, "train")  # fixes (and records) the carved split now
    return task
