"""Training curves of runs: `nanoft plot RUN_OR_RUNS_DIR... --y loss --x step`.

Runs are read only through `RunDir` (metrics.jsonl, results.json). Runs of one experiment, the
`<experiment>/seed<k>/` folders `nanoft run` writes, are drawn as one curve: the mean over seeds at the
steps every seed logged, with a band of ± one sample standard deviation (as `nanoft report` computes
it). Any other run is its own curve.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from nanoft.errors import ConfigError
from nanoft.experiment import _SEED_DIR  # the `seed<k>` folder name `nanoft run` writes and `report` groups by
from nanoft.plot.style import color, new_figure, require_matplotlib, styled
from nanoft.train.rundir import CONFIG, RunDir

X_AXES = {"step": "optimizer step", "examples": "training examples seen", "seconds": "training time (s)"}
TRAIN_KEYS = {"loss": "training loss", "lr": "learning rate", "grad_norm": "gradient norm (L2, before clipping)",
              "examples_per_s": "training throughput (examples/s)"}
METRIC_NAMES = {"accuracy": "accuracy", "matthews_corrcoef": "Matthews correlation", "f1": "F1",
                "f1_macro": "macro F1", "pearson": "Pearson r", "spearman": "Spearman ρ", "loss": "loss",
                "perplexity": "perplexity"}


@dataclass
class Curve:
    """One run's values of `y` at the steps it logged them, with the x position of each step."""

    run: RunDir
    steps: np.ndarray  # (points,) int
    x: np.ndarray  # (points,)
    y: np.ndarray  # (points,)


@dataclass
class Series:
    """What one legend entry draws: a run's curve, or an experiment's mean ± std over its seeds."""

    label: str
    x: np.ndarray
    y: np.ndarray
    std: Optional[np.ndarray]  # None for a single run
    runs: int


def y_label(y: str) -> str:
    if y in TRAIN_KEYS:
        return TRAIN_KEYS[y]
    split, _, metric = y.partition(".")
    return f"{split} {METRIC_NAMES.get(metric, metric)}"


def find_runs(path: Union[str, Path]) -> List[RunDir]:
    """The run at `path`, or every run (a folder with config.toml) below it, in path order."""
    run = RunDir(path)
    if not run.path.exists():
        raise ConfigError("run or runs folder does not exist", path=str(run.path))
    if run.is_run():
        return [run]
    runs = [RunDir(p.parent) for p in sorted(run.path.rglob(CONFIG)) if RunDir(p.parent).is_run()]
    if not runs:
        raise ConfigError("no run here: no folder with config.toml", path=str(run.path),
                          fix="point at a run directory or a folder of runs (nanoft train/run write them)")
    return runs


def group_runs(paths: Sequence[Union[str, Path]]) -> List[Tuple[str, List[RunDir]]]:
    """(label, runs) per experiment: `.../<experiment>/seed<k>` runs share the folder above; every other run
    is alone. Labels are folders relative to the path given (or the folder's name)."""
    groups: Dict[Path, Tuple[str, List[RunDir]]] = {}
    for given in paths:
        base = Path(given)
        for run in find_runs(base):
            key = run.path.parent if _SEED_DIR.match(run.path.name) else run.path
            try:
                label = str(key.relative_to(base)) if key != base else key.resolve().name
            except ValueError:  # the seed folder itself was given: name the experiment
                label = key.resolve().name
            members = groups.setdefault(key.resolve(), (label, []))[1]
            if all(run.path.resolve() != m.path.resolve() for m in members):  # a run named twice counts once
                members.append(run)
    return list(groups.values())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def curve(run: RunDir, y: str, x: str = "step") -> Optional[Curve]:
    """`y` (a training key, or `split.metric` of the evaluations) against `x` for one run; None if it has no `y`."""
    if x not in X_AXES:
        raise ConfigError(f"--x {x!r} is not one of {', '.join(X_AXES)}", fix="pick one of those")
    records = run.metrics()
    train = [r for r in records if "eval" not in r and _number(r.get("step"))]
    if "." in y and y not in TRAIN_KEYS:
        split, metric = y.split(".", 1)
        points = [(r["step"], r["eval"][split][metric]) for r in records
                  if isinstance(r.get("eval"), dict) and isinstance(r["eval"].get(split), dict)
                  and _number(r["eval"][split].get(metric))]
    else:
        points = [(r["step"], r[y]) for r in train if _number(r.get(y))]
    if not points:
        return None
    steps = np.array([p[0] for p in points], dtype=np.int64)
    values = np.array([p[1] for p in points], dtype=np.float64)
    return Curve(run, steps, _x_at(run, train, steps, x), values)


def _x_at(run: RunDir, train: List[Dict[str, Any]], steps: np.ndarray, x: str) -> np.ndarray:
    """Examples seen or training seconds at `steps`, interpolated between logged training records
    (evaluations fall on or between them). Seconds = examples per process / its examples_per_s."""
    if x == "step":
        return steps.astype(np.float64)
    logged = [r for r in train if _number(r.get("examples")) and _number(r.get("examples_per_s"))]
    if not logged:
        raise ConfigError(f"--x {x}: this run's metrics.jsonl has no examples count (an older nanoft wrote it)",
                          path=str(run.path), fix="use --x step")
    world = 1
    if run.has_results():
        world = int(run.read_results().get("world_size") or 1)
    at = np.array([r["step"] for r in logged], dtype=np.float64)
    examples = np.array([r["examples"] for r in logged], dtype=np.float64)
    if x == "examples":
        values = examples
    else:
        values = examples / world / np.maximum(np.array([r["examples_per_s"] for r in logged]), 1e-9)
    return np.interp(steps.astype(np.float64), np.concatenate([[0.0], at]), np.concatenate([[0.0], values]))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points (fewer at the start), so a smoothed curve never looks ahead."""
    if window <= 1:
        return values
    sums = np.cumsum(np.concatenate([[0.0], values]))
    i = np.arange(1, len(values) + 1)
    start = np.maximum(0, i - window)
    return (sums[i] - sums[start]) / (i - start)


def series(label: str, curves: List[Curve], window: int = 1) -> Series:
    """One run as is; several seeds as mean ± sample std at the steps all of them logged."""
    if len(curves) == 1:
        c = curves[0]
        return Series(label, c.x, smooth(c.y, window), None, 1)
    common = curves[0].steps
    for c in curves[1:]:
        common = np.intersect1d(common, c.steps)
    if len(common) == 0:
        raise ConfigError(f"the {len(curves)} runs of {label!r} share no logged step", path=str(curves[0].run.path),
                          fix="give them the same --log-every/--eval-every, or plot them one by one")
    ys = np.stack([smooth(c.y, window)[np.searchsorted(c.steps, common)] for c in curves])  # (runs, points)
    xs = np.stack([c.x[np.searchsorted(c.steps, common)] for c in curves])
    return Series(f"{label} (mean ± std, {len(curves)} seeds)", xs.mean(axis=0), ys.mean(axis=0),
                  ys.std(axis=0, ddof=1), len(curves))


def collect_series(paths: Sequence[Union[str, Path]], y: str, x: str = "step", window: int = 1) -> List[Series]:
    """Every experiment's or run's series of `y`; a ConfigError naming what the runs do log if none has `y`."""
    if window < 1:
        raise ConfigError(f"--smooth {window}: must be at least 1", fix="e.g. --smooth 5")
    out: List[Series] = []
    groups = group_runs(paths)
    for label, runs in groups:
        curves = [c for c in (curve(run, y, x) for run in runs) if c is not None]
        if curves:
            out.append(series(label, curves, window))
    if not out:
        found = sorted({key for _, runs in groups for run in runs for key in _keys(run)})
        raise ConfigError(f"no run logged {y!r}; found: {', '.join(found) or 'nothing'}",
                          fix="pick --y from those")
    return out


def _keys(run: RunDir) -> List[str]:
    keys = []
    for r in run.metrics():
        if isinstance(r.get("eval"), dict):
            keys += [f"{s}.{m}" for s, ms in r["eval"].items() if isinstance(ms, dict) for m in ms]
        else:
            keys += [k for k in TRAIN_KEYS if k in r]
    return keys


def plot_runs(paths: Sequence[Union[str, Path]], y: str = "loss", x: str = "step", *, smooth_window: int = 1,
              title: Optional[str] = None, log_y: bool = False) -> Any:
    """A figure of `y` against `x` for the runs under `paths`: one line per run, mean ± std band per experiment."""
    require_matplotlib()  # before reading any run: a missing install is the first thing said
    all_series = collect_series(paths, y, x, smooth_window)
    with styled():
        fig, (ax,) = new_figure()
        for i, s in enumerate(all_series):
            line, = ax.plot(s.x, s.y, color=color(i), linewidth=1.5, label=s.label)
            if s.std is not None:
                ax.fill_between(s.x, s.y - s.std, s.y + s.std, color=color(i), alpha=0.2, linewidth=0)
        ax.set_xlabel(X_AXES[x])
        ylabel = y_label(y) + (f" (trailing mean of {smooth_window} points)" if smooth_window > 1 else "")
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        runs = sum(s.runs for s in all_series)
        ax.set_title(title or f"{y_label(y).capitalize()} vs {X_AXES[x]} ({runs} run{'s' * (runs != 1)})")
        ax.legend(loc="best")
    return fig
