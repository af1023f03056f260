"""Evaluation metrics, in numpy: accuracy, F1, Matthews correlation, Pearson, Spearman, GLUE score.

Conventions: `predictions` and `labels` are 1-D arrays of class indices (classification) or floats
(regression); `compute` also takes logits `(n, num_classes)` and takes their argmax. Values are
fractions in [0, 1] (correlations in [-1, 1]); multiply by 100 for the usual GLUE tables.
Degenerate inputs give 0, not NaN: a constant prediction carries no correlation with the labels
(Matthews, Pearson, Spearman), and an F1 with no positives in either array is 0.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np


def _pair(predictions, labels) -> tuple:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be 1-D and of the same length")
    if p.size == 0:
        raise ValueError("no predictions to score")
    return p, y


def accuracy(predictions, labels) -> float:
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def _f1_of(p: np.ndarray, y: np.ndarray, positive) -> float:
    tp = np.sum((p == positive) & (y == positive))
    fp = np.sum((p == positive) & (y != positive))
    fn = np.sum((p != positive) & (y == positive))
    denom = 2 * tp + fp + fn  # F1 = 2PR/(P+R) = 2tp / (2tp + fp + fn)
    return float(2 * tp / denom) if denom > 0 else 0.0


def f1(predictions, labels, average: str = "binary", pos_label: int = 1) -> float:
    """F1 of class `pos_label` ('binary'), or the unweighted mean over classes seen ('macro')."""
    p, y = _pair(predictions, labels)
    if average == "binary":
        return _f1_of(p, y, pos_label)
    if average == "macro":
        classes = np.union1d(p, y)
        return float(np.mean([_f1_of(p, y, c) for c in classes]))
    raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004); 0 when either side is constant."""
    p, y = _pair(predictions, labels)
    classes, index = np.unique(np.concatenate([y, p]), return_inverse=True)
    yi, pi = index[: len(y)], index[len(y):]
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.float64)  # (true, predicted)
    np.add.at(confusion, (yi, pi), 1.0)
    n = confusion.sum()
    correct = np.trace(confusion)
    true_counts = confusion.sum(axis=1)
    pred_counts = confusion.sum(axis=0)
    cov_yp = correct * n - pred_counts @ true_counts
    cov_pp = n * n - pred_counts @ pred_counts
    cov_yy = n * n - true_counts @ true_counts
    denom = np.sqrt(cov_pp * cov_yy)
    return float(cov_yp / denom) if denom > 0 else 0.0


def pearson(predictions, labels) -> float:
    """Pearson correlation; 0 when either side has no variance."""
    p, y = _pair(predictions, labels)
    p = p.astype(np.float64) - p.mean()
    y = y.astype(np.float64) - y.mean()
    denom = np.sqrt((p @ p) * (y @ y))
    return float((p @ y) / denom) if denom > 0 else 0.0


def rankdata(x) -> np.ndarray:
    """1-based ranks; tied values share the average of the ranks they span."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # start of each run of equal values in the sorted order
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [len(x)]])
    average = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    run = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = average[run]
    return ranks


def spearman(predictions, labels) -> float:
    """Spearman rank correlation: Pearson on average ranks."""
    p, y = _pair(predictions, labels)
    return pearson(rankdata(p), rankdata(y))


# The metrics that enter the GLUE score, per task (gluebenchmark.com leaderboard): a task with two
# metrics scores their mean; MNLI matched and mismatched are averaged into the one MNLI score; the
# GLUE score is the mean over tasks. AX (diagnostics) is not part of the score.
GLUE_METRICS: Dict[str, Sequence[str]] = {
    "cola": ("matthews_corrcoef",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"), "qqp": ("f1", "accuracy"), "mnli": ("accuracy",),
    "mnli_mismatched": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",),
}
_ALIASES = {"mnli_matched": "mnli", "mnli-m": "mnli", "mnli-mm": "mnli_mismatched", "sst-2": "sst2",
            "sts-b": "stsb"}


def glue_task_score(task: str, result: Mapping[str, float]) -> float:
    """One task's GLUE score: the mean of its leaderboard metrics."""
    names = GLUE_METRICS[task]
    missing = [m for m in names if m not in result]
    if missing:
        raise ValueError(f"GLUE task '{task}' result lacks {', '.join(missing)} (has {', '.join(result)})")
    return float(np.mean([result[m] for m in names]))


def glue_score(results: Mapping[str, Mapping[str, float]]) -> float:
    """GLUE score over the tasks given: {'cola': {'matthews_corrcoef': .5}, 'mnli': {...},
    'mnli_mismatched': {...}, ...} -> mean of task scores (the full score needs all 9 tasks)."""
    scores: Dict[str, float] = {}
    mnli = []
    for name, result in results.items():
        task = _ALIASES.get(name.lower(), name.lower())
        if task not in GLUE_METRICS:
            raise ValueError(f"'{name}' is not a GLUE task; GLUE tasks: {', '.join(GLUE_METRICS)}")
        if task in ("mnli", "mnli_mismatched"):
            mnli.append(glue_task_score(task, result))
        else:
            scores[task] = glue_task_score(task, result)
    if mnli:
        scores["mnli"] = float(np.mean(mnli))
    if not scores:
        raise ValueError("no task results to score")
    return float(np.mean(list(scores.values())))


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "f1_macro": lambda p, y: f1(p, y, average="macro"),
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(metric_names: Sequence[str], predictions, labels) -> Dict[str, float]:
    """{name: value} for each metric. predictions: indices, floats, or logits (n, classes)."""
    p = np.asarray(predictions)
    if p.ndim == 2:
        p = p[:, 0] if p.shape[1] == 1 else p.argmax(axis=1)  # regression column, or class logits
    y = np.asarray(labels)
    out = {}
    for name in metric_names:
        if name not in METRICS:
            raise ValueError(f"unknown metric '{name}'; known: {', '.join(METRICS)}")
        out[name] = METRICS[name](p, y)
    return out
