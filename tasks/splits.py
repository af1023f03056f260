"""Seeded, stratified splitting of one labelled file into train/dev/test parts.

Stratified: every class is cut in the same proportions, so a 10% dev set of a 70/30 data set is
also 70/30. Per class, the rows are shuffled with the seed and the first share goes to part 0,
the next to part 1, and so on; shares are rounded by largest remainder so they add up to the class
size. When that leaves a part empty (many classes smaller than 1 / fraction: 12 classes of 4 rows
give no 10% dev row), the rows are instead ordered by their quantile within their shuffled class
and cut at the overall shares, so every part gets its share of the file (dev: 5 of 48). The same
(file, fractions, seed) always gives the same parts; runs save the indices too.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from nanoft.errors import ConfigError


def parse_split(spec: Union[str, Sequence[float], None]) -> Optional[Tuple[float, ...]]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); 2 or 3 positive fractions that sum to 1."""
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            fractions = tuple(float(x) for x in spec.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"--split '{spec}' is not a list of numbers",
                              fix="write fractions like 0.8,0.1,0.1") from None
    else:
        fractions = tuple(float(x) for x in spec)
    if len(fractions) not in (2, 3) or any(f <= 0 for f in fractions):
        raise ConfigError(f"--split {spec!r} needs 2 (train,dev) or 3 (train,dev,test) positive fractions",
                          fix="write e.g. 0.8,0.1,0.1")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"--split fractions {spec!r} sum to {sum(fractions):g}, not 1",
                          fix="make them add up to 1, e.g. 0.8,0.1,0.1")
    return fractions


def _shares(n: int, fractions: Sequence[float]) -> List[int]:
    """Split n items into len(fractions) counts that sum to n (largest remainder rounding)."""
    exact = np.asarray(fractions, dtype=np.float64) * n
    counts = np.floor(exact).astype(np.int64)
    remainder = exact - counts
    order = np.argsort(-remainder, kind="stable")  # ties go to the earlier part
    counts[order[: n - int(counts.sum())]] += 1
    return counts.tolist()


def stratified_split(labels: Optional[np.ndarray], n: int, fractions: Sequence[float],
                     seed: int) -> List[np.ndarray]:
    """Row indices of each part (sorted, so a part keeps the file's order).

    labels: class index per row for stratification, or None (regression, unlabelled) for a plain
    seeded random split.
    """
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts = _class_by_class(groups, fractions, seed)
    if any(len(p) == 0 for p in parts) and n >= len(fractions):
        parts = _by_quantile(groups, n, fractions, seed)
    return parts


def _class_by_class(groups: List[np.ndarray], fractions: Sequence[float], seed: int) -> List[np.ndarray]:
    """Each class shuffled and cut at its own rounded shares."""
    rng = np.random.default_rng(seed)
    parts: List[List[np.ndarray]] = [[] for _ in fractions]
    for rows in groups:
        rows = rows[rng.permutation(len(rows))]
        start = 0
        for k, count in enumerate(_shares(len(rows), fractions)):
            parts[k].append(rows[start:start + count])
            start += count
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def _by_quantile(groups: List[np.ndarray], n: int, fractions: Sequence[float], seed: int) -> List[np.ndarray]:
    """Every row gets its quantile in its shuffled class; all rows, ordered by it, are cut at the overall
    shares: each part has exactly its share of the file, each class is split in proportion to within a row."""
    rng = np.random.default_rng(seed)
    quantile = np.empty(n, dtype=np.float64)
    for rows in groups:
        rows = rows[rng.permutation(len(rows))]
        quantile[rows] = (np.arange(len(rows)) + 0.5) / len(rows)
    order = np.lexsort((rng.random(n), quantile))  # by quantile; ties (classes of one size) in seeded order
    bounds = np.cumsum([0] + _shares(n, fractions))
    return [np.sort(order[bounds[k]:bounds[k + 1]]) for k in range(len(fractions))]
