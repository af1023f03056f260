"""What a task is: where its files are, which columns hold text and label, its labels and metrics.

A `Task` is a plain, JSON-serialisable description; `task.load(data_dir, split)` turns it into
`Examples` (texts, optional second texts, label indices or float targets, source line numbers).
Splits that the data set does not ship (a dev set for AG News, everything for IMDB) are carved
from a file by a seeded stratified split, and the carved row indices are kept in the task so a
saved run reloads exactly the same rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from nanoft.tasks.files import Column, Table, read_table
from nanoft.errors import ConfigError, DataError
from nanoft.tasks.splits import stratified_split

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Examples:
    """Rows of one split. labels: int64 class indices, float32 targets, or None (unlabelled test)."""

    texts: List[str]
    text_pairs: Optional[List[str]]
    labels: Optional[np.ndarray]
    lines: np.ndarray  # 1-based line in `source` where each example starts
    source: str = ""
    fingerprint: str = ""  # identifies (file content, columns, selected rows); keys the encoding cache

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> "Examples":
        """A subset, in the given order, with its own fingerprint."""
        idx = np.asarray(indices, dtype=np.int64)
        digest = hashlib.blake2b(idx.tobytes(), digest_size=8).hexdigest()
        return Examples(
            texts=[self.texts[i] for i in idx],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            lines=self.lines[idx],
            source=self.source,
            fingerprint=f"{self.fingerprint}:{digest}" if self.fingerprint else "",
        )


@dataclass(frozen=True)
class Split:
    """Where a split's rows come from: the first existing file of `files` (names inside the task's
    folder, or absolute paths), optionally only parts `parts` of a stratified split by `fractions`."""

    files: Tuple[str, ...]
    parts: Tuple[int, ...] = ()
    fractions: Tuple[float, ...] = ()


@dataclass(frozen=True)
class Layout:
    """Column positions for a file without a header (e.g. the original GLUE CoLA: 4 columns)."""

    text_columns: Tuple[int, ...]
    label_column: int
    width: int


@dataclass
class Task:
    name: str
    text_columns: Tuple[Column, ...]  # one column (single text) or two (sentence pair)
    label_column: Optional[Column]
    label_names: Optional[List[str]]  # None for regression
    is_regression: bool
    metrics: Tuple[str, ...]  # names understood by nanoft.metrics.compute
    main_metric: str
    splits: Dict[str, Split]
    eval_splits: Tuple[str, ...] = ("dev",)  # evaluated during training; the first one selects models
    folders: Tuple[str, ...] = ()  # candidate folders under the data dir (lowercase and GLUE names)
    format: Optional[str] = None  # tsv, csv, jsonl; None: from the file extension
    has_header: bool = True
    headerless: Optional[Layout] = None  # used when a file's first line lacks the named columns
    label_indices: bool = True  # integer label values index label_names (GLUE files use 0/1)
    seed: int = 0  # seed of carved splits
    description: str = ""
    carved: Dict[str, List[List[int]]] = field(default_factory=dict)  # file sha256 -> row indices per part

    def __post_init__(self) -> None:
        self.text_columns = tuple(self.text_columns)
        if len(self.text_columns) not in (1, 2):
            raise ConfigError(f"task '{self.name}' needs one or two text columns, got {len(self.text_columns)}",
                              fix="pass --text-column once (single text) or twice (sentence pair)")

    @property
    def num_labels(self) -> int:
        """Output size of the head: classes, or 1 for regression."""
        return 1 if self.is_regression else len(self.label_names or [])

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    # -- files ------------------------------------------------------------------------------
    def resolve(self, data_dir: Union[str, Path, None], split: str) -> Path:
        """The file that holds `split`."""
        spec = self._split(split)
        candidates: List[Path] = []
        for name in spec.files:
            if Path(name).is_absolute():
                candidates.append(Path(name))
                continue
            base = resolve_data_dir(data_dir)
            candidates += [base / folder / name for folder in (self.folders or (".",))]
        for path in candidates:
            if path.is_file():
                return path
        if len(candidates) == 1:  # one possible place: report it as the missing file
            raise DataError("file not found", path=str(candidates[0]),
                            fix=f"create it or check the path of split '{split}'")
        looked = ", ".join(str(p) for p in candidates)
        raise DataError(f"task '{self.name}': no file for split '{split}'; looked for {looked}",
                        fix="pass --data-dir pointing at the folder that holds the task folders")

    def _split(self, split: str) -> Split:
        if split not in self.splits:
            raise ConfigError(f"task '{self.name}' has no split '{split}'; splits: {', '.join(self.splits)}",
                              fix="pick one of those")
        return self.splits[split]

    # -- loading ----------------------------------------------------------------------------
    def load(self, data_dir: Union[str, Path, None] = None, split: str = "train") -> Examples:
        """Read one split: texts, pairs, labels (indices or floats) and source line numbers."""
        spec = self._split(split)
        table = read_table(self.resolve(data_dir, split), self.format, self.has_header)
        text_columns, label_column, table = self._layout(table)
        text_idx = [table.column_index(c) for c in text_columns]
        labelled = label_column is not None
        if labelled and split.startswith("test") and not _has_column(table, label_column):
            labelled = False  # test files (GLUE's, say) may ship without labels
        labels = self._parse_labels(table, table.column_index(label_column)) if labelled else None

        lines = np.asarray(table.lines, dtype=np.int64)
        texts = [row[text_idx[0]] for row in table.rows]
        pairs = [row[text_idx[1]] for row in table.rows] if len(text_idx) == 2 else None
        key = json.dumps([table.sha256, table.format, table.header is not None, text_idx])
        examples = Examples(texts, pairs, labels, lines, source=table.path,
                            fingerprint=hashlib.blake2b(key.encode(), digest_size=16).hexdigest())
        if not spec.parts:
            return examples
        parts = self._carve(table, labels, spec.fractions)
        return examples.select(np.sort(np.concatenate([parts[p] for p in spec.parts])))

    def _layout(self, table: Table) -> Tuple[Tuple[Column, ...], Optional[Column], Table]:
        """Named columns when the header has them, else the header-less layout if the width fits."""
        if table.header is None or self.headerless is None:
            return self.text_columns, self.label_column, table
        named = [c for c in self.text_columns if isinstance(c, str)]
        if all(c in table.header for c in named):
            return self.text_columns, self.label_column, table
        if table.width == self.headerless.width:
            return self.headerless.text_columns, self.headerless.label_column, table.without_header()
        return self.text_columns, self.label_column, table  # column_index reports what is missing

    def _parse_labels(self, table: Table, index: int) -> np.ndarray:
        values = [row[index] for row in table.rows]
        if self.is_regression:
            out = np.empty(len(values), dtype=np.float32)
            for i, value in enumerate(values):
                try:
                    target = float(value)
                except ValueError:
                    raise DataError(f"label {value!r} is not a number (task '{self.name}' is regression)",
                                    path=table.path, line=table.lines[i], fix="fix or remove the row") from None
                if not abs(target) <= _FLOAT32_MAX:  # nan, inf, or beyond float32: the loss would be nan
                    raise DataError(f"label {value!r} is not a finite float32 number (task '{self.name}' is "
                                    "regression)", path=table.path, line=table.lines[i], fix="fix or remove the row")
                out[i] = target
            return out
        lookup = {name: i for i, name in enumerate(self.label_names or [])}
        if self.label_indices:
            lookup.update({str(i): i for i in range(len(self.label_names or []))})
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            label = lookup.get(value.strip())
            if label is None:
                known = ", ".join(map(repr, self.label_names or []))
                extra = f" or 0..{len(self.label_names or []) - 1}" if self.label_indices else ""
                raise DataError(f"label {value!r} not in the label set of '{self.name}' ({known}{extra})",
                                path=table.path, line=table.lines[i],
                                fix="fix the label, or pass --label-column for the right column")
            out[i] = label
        return out

    def _carve(self, table: Table, labels: Optional[np.ndarray], fractions: Sequence[float]) -> List[np.ndarray]:
        """Row indices of each part of the file's seeded stratified split (recorded for reloads)."""
        frozen = self.carved.get(table.sha256)
        if frozen is not None:
            parts = [np.asarray(p, dtype=np.int64) for p in frozen]
            if sum(len(p) for p in parts) != len(table.rows):
                raise DataError(f"the saved split has {sum(len(p) for p in parts)} rows but the file has "
                                f"{len(table.rows)}", path=table.path, fix="the file changed: start a new run")
            return parts
        if self.carved:  # a run's saved split, for another version of the file: re-carving would mix its parts
            raise DataError("the file changed since the run carved its train/dev split from it (its SHA-256 "
                            "differs), so its dev rows are no longer held out", path=table.path,
                            fix="restore the file the run trained on, or start a new run")
        stratify = None if self.is_regression else labels
        parts = stratified_split(stratify, len(table.rows), fractions, self.seed)
        if any(len(p) == 0 for p in parts):  # an empty dev set would only fail later, at the first evaluation
            sizes = "/".join(str(len(p)) for p in parts)
            raise DataError(f"{len(table.rows)} rows are too few to carve splits of {','.join(map(str, fractions))} "
                            f"(rows per part: {sizes})", path=table.path,
                            fix="add rows, change --split, or pass --dev-file")
        self.carved[table.sha256] = [p.tolist() for p in parts]
        return parts

    # -- saving -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready description, including label map and carved split rows, saved with each run."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        d = dict(d)
        d["splits"] = {k: Split(tuple(v["files"]), tuple(v.get("parts", ())), tuple(v.get("fractions", ())))
                       for k, v in d["splits"].items()}
        if d.get("headerless"):
            h = d["headerless"]
            d["headerless"] = Layout(tuple(h["text_columns"]), h["label_column"], h["width"])
        for key in ("text_columns", "metrics", "eval_splits", "folders"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


def resolve_data_dir(data_dir: Union[str, Path, None]) -> Path:
    """--data-dir, else $NANOFT_DATA_DIR."""
    if data_dir is None:
        data_dir = os.environ.get("NANOFT_DATA_DIR")
    if not data_dir:
        raise ConfigError("no data directory given", fix="pass --data-dir or set NANOFT_DATA_DIR")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError("data directory not found", path=str(path), fix="pass --data-dir with an existing folder")
    return path


def _has_column(table: Table, column: Column) -> bool:
    if isinstance(column, int):
        return column < table.width
    return table.header is not None and column in table.header


def is_int(value: str) -> bool:
    return bool(_INT.match(value.strip()))
