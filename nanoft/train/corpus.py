"""Where pretraining text comes from: a text file (one document per line), a column of a TSV/CSV/JSONL
file, or a task's texts (labels ignored). Returns the train documents and the held-out ones."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from nanoft.errors import ConfigError, DataError

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".ndjson")

# (texts, second texts of pairs or None): what the packer tokenizes. In a corpus of several tasks the
# pairs list holds None for the single texts.
Documents = Tuple[List[str], Optional[List[Optional[str]]]]


def read_documents(path: str, text_column: Optional[str] = None) -> List[str]:
    """The non-blank documents of one file: its lines, or one column of a table (--text-column)."""
    from nanoft.tasks import read_table
    from nanoft.tasks.files import read_text

    if Path(path).suffix.lower() in TABLE_SUFFIXES:
        docs = read_table(path).column(text_column or "text")
    else:
        docs = read_text(path)[0].splitlines()
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError("the corpus is empty (no non-blank document)", path=path,
                        fix="give a file with one document per line")
    return docs


def hold_out(docs: List[str], fraction: float, seed: int, source: str) -> Tuple[List[str], List[str]]:
    """(train, held-out): a seeded random `fraction` of the documents (at least one), both in file order."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--split must be a fraction in (0, 1), got {fraction}", fix="e.g. --split 0.05")
    if len(docs) < 2:
        raise DataError(f"the corpus has {len(docs)} document; holding some out needs at least 2", path=source,
                        fix="give more documents or a --dev-file")
    n_dev = min(len(docs) - 1, max(1, int(round(fraction * len(docs)))))
    is_dev = np.zeros(len(docs), dtype=bool)
    is_dev[np.random.default_rng(seed).permutation(len(docs))[:n_dev]] = True
    return [d for d, x in zip(docs, is_dev) if not x], [d for d, x in zip(docs, is_dev) if x]


def split_fraction(split: Optional[str]) -> float:
    try:
        return float(split or "")
    except ValueError:
        raise ConfigError(f"--split {split!r} is not a fraction", fix="e.g. --split 0.05") from None


def _joined(splits) -> Documents:
    """Several tasks' splits as one document list, in order; pairs stay pairs (None for single texts)."""
    texts = [t for split in splits for t in split.texts]
    if all(split.text_pairs is None for split in splits):
        return texts, None
    pairs = [p for split in splits for p in (split.text_pairs or [None] * len(split.texts))]
    return texts, pairs


def task_documents(names: str, data_dir: Optional[str], part: str) -> Documents:
    """The texts of comma-separated built-in tasks: their "train" splits, or their "held-out" ones (each task's
    first evaluation split, the texts a pretraining run on those tasks never trains on)."""
    from nanoft.tasks import get_task

    tasks = [get_task(name.strip()) for name in names.split(",")]
    return _joined([task.load(data_dir, "train" if part == "train" else task.eval_splits[0]) for task in tasks])


def load_corpus(config) -> Tuple[Documents, Documents, str]:
    """(train documents, held-out documents, a name for the corpus) from a PretrainConfig."""
    if config.task:
        return task_documents(config.task, config.data_dir, "train"), \
            task_documents(config.task, config.data_dir, "held-out"), config.task.replace(",", "+")
    column = config.text_columns[0] if config.text_columns else None
    docs = read_documents(config.text_file, column)
    if config.dev_file:
        return (docs, None), (read_documents(config.dev_file, column), None), Path(config.text_file).stem
    train, dev = hold_out(docs, split_fraction(config.split), config.seed, config.text_file)
    return (train, None), (dev, None), Path(config.text_file).stem


__all__ = ["read_documents", "hold_out", "load_corpus", "task_documents", "Documents"]
