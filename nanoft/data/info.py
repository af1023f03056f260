"""What a task looks like: rows and labels per split, lengths, and the padding each batching wastes.

`padding_waste` is the figure bucketing exists for: tokens the model processes (batch size x
padded length, summed over an epoch) divided by the real tokens. 1.0 means no padding at all.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from nanoft.data.encode import encode
from nanoft.data.samplers import BucketBatchSampler, RandomBatchSampler
from nanoft.errors import ConfigError, DataError
from nanoft.tables import render_table


def padding_waste(lengths: Sequence[int], batch_size: int, strategy: str, seed: int = 0,
                  max_tokens: Optional[int] = None) -> float:
    """Padded tokens / real tokens over one epoch. strategy: 'bucket', 'random' or 'fixed:N'
    (every example padded, or truncated, to N tokens)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if strategy.startswith("fixed:"):
        width = int(strategy.split(":", 1)[1])
        return float(len(lengths) * width / np.minimum(lengths, width).sum())
    if strategy == "bucket":
        sampler: Any = BucketBatchSampler(lengths, batch_size, max_tokens=max_tokens, seed=seed)
    elif strategy == "random":
        sampler = RandomBatchSampler(lengths, batch_size, max_tokens=max_tokens, seed=seed)
    else:
        raise ConfigError(f"unknown batching strategy '{strategy}'", fix="use bucket, random or fixed:N")
    padded = sum(len(batch) * int(lengths[batch].max()) for batch in sampler)
    return float(padded / lengths.sum())


def task_summary(task: Any, data_dir: Union[str, Path, None] = None, tokenizer: Any = None,
                 max_length: int = 128, batch_size: int = 32,
                 cache_dir: Union[str, Path, None] = None) -> List[Dict[str, Any]]:
    """One row per split that has a file: rows, label counts and, given a tokenizer, token lengths
    and padding waste of bucketed, random and fixed-length batches."""
    rows = []
    for split in task.splits:
        try:
            path = task.resolve(data_dir, split)
        except DataError:
            continue  # e.g. GLUE test files that were not downloaded
        examples = task.load(data_dir, split)
        row: Dict[str, Any] = {"split": split, "file": str(path), "rows": len(examples)}
        if examples.labels is None:
            row["labels"] = "unlabelled"
        elif task.is_regression:
            row["labels"] = f"mean {examples.labels.mean():.2f}, range {examples.labels.min():g}..{examples.labels.max():g}"
        else:
            counts = Counter(examples.labels.tolist())
            row["labels"] = " / ".join(f"{name} {counts.get(i, 0)}" for i, name in enumerate(task.label_names))
        if tokenizer is not None:
            lengths = encode(examples, tokenizer, max_length, cache_dir).lengths
            row.update({"mean_len": round(float(lengths.mean()), 1), "max_len": int(lengths.max()),
                        "tokens": int(lengths.sum()),
                        "waste_bucket": round(padding_waste(lengths, batch_size, "bucket"), 3),
                        "waste_random": round(padding_waste(lengths, batch_size, "random"), 3),
                        f"waste_fixed{max_length}": round(padding_waste(lengths, batch_size, f"fixed:{max_length}"), 3)})
        rows.append(row)
    return rows


def describe(task: Any, data_dir: Union[str, Path, None] = None, tokenizer: Any = None, max_length: int = 128,
             batch_size: int = 32, cache_dir: Union[str, Path, None] = None) -> str:
    """A short text for `nanoft info --task NAME`: the task, then one line per split."""
    kind = "regression" if task.is_regression else f"{task.num_labels} classes: {', '.join(task.label_names)}"
    columns = " + ".join(str(c) for c in task.text_columns)
    head = [f"{task.name}: {task.description}".rstrip(": "),
            f"  text: {columns} ({'pair' if task.is_pair else 'single'}); label: {task.label_column} ({kind})",
            f"  metrics: {', '.join(task.metrics)} (main: {task.main_metric}); eval on: {', '.join(task.eval_splits)}"]
    rows = task_summary(task, data_dir, tokenizer, max_length, batch_size, cache_dir)
    if not rows:
        return "\n".join(head + ["  (no data files found)"])
    if tokenizer is not None:
        head.append(f"  padding waste = processed tokens / real tokens, batch {batch_size}, max length {max_length}")
    columns_out = [c for c in rows[0] if c != "file"]
    cells = [[str(r.get(c, "")) for c in columns_out] for r in rows]
    lines = ["  " + line.rstrip() for line in render_table(columns_out, cells, rule=False).splitlines()]
    return "\n".join(head + lines)
