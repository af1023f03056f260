"""Pictures of benchmark result files: `nanoft plot bench bench/results/<name>.json`.

The kind of picture follows from the rows' fields (what `nanoft bench ...` writes):

    scaling     rows of kind, seq, fwd_bwd_ms, peak_mb (nanoft bench attention): time and memory against n
                on log-log axes, one line per kind, the fitted slope (y ~ n^slope) in the legend
    peft        rows of method, a dev metric, trainable_% (nanoft bench peft): bars per method
    techniques  rows of experiment with "mean ± std" cells over seeds (nanoft run + report): bars with ±std
    speed       rows of side, precision, examples_per_s (nanoft bench train): grouped bars

Rows that repeat a method or experiment with a `seed` field are averaged: bar = mean, error bar = sample std.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from nanoft.errors import ConfigError
from nanoft.plot.runs import METRIC_NAMES
from nanoft.plot.style import color, new_figure, require_matplotlib, styled

FIT_FROM = 512  # slopes are fitted on n >= this, where fixed per-call overheads no longer dominate
PEFT_COSTS = {"trainable", "trainable_%", "adapter_MB", "examples_per_s", "peak_memory_MB", "steps", "lr",
              "merge_max_abs_diff", "seed"}
_MEAN_STD = re.compile(r"^\s*(-?[\d.]+(?:e-?\d+)?)\s*±\s*([\d.]+(?:e-?\d+)?)\s*$")
_MEAN_STD_HEADER = re.compile(r"\s*\(mean ± std\)\s*$")


def read_result(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("result file not found", path=str(path), fix="give a bench/results/<name>.json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"not valid JSON: {e}", path=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("not a benchmark result (a JSON object with rows)", path=str(path))
    return data


def kind_of(data: Dict[str, Any]) -> Optional[str]:
    """Which picture the rows make, from their fields (None: no picture for this file)."""
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    keys = set().union(*rows)
    if {"kind", "seq", "peak_mb"} <= keys and ({"fwd_bwd_ms", "fwd_ms"} & keys):
        return "scaling"
    if "method" in keys and "trainable_%" in keys:
        return "peft"
    if "experiment" in keys:
        return "techniques"
    if {"side", "examples_per_s", "train_seconds"} <= keys:
        return "speed"
    return None


def plot_bench(path: Union[str, Path], title: Optional[str] = None) -> Any:
    """The figure of one benchmark result file."""
    require_matplotlib()
    data = read_result(path)
    kind = kind_of(data)
    if kind is None:
        raise ConfigError("no picture for this result file: its rows are not attention scaling (kind, seq), PEFT "
                          "(method, trainable_%), techniques (experiment) or training speed (side, train_seconds, "
                          "examples_per_s)", path=str(path))
    with styled():
        fig = DRAW[kind](data)
        if title:
            fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------ helpers
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_log_slope(n: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares exponent p of y ~ n^p: the slope of log y against log n."""
    ln, ly = np.log(np.asarray(n, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    ln_c = ln - ln.mean()
    return float((ln_c * (ly - ly.mean())).sum() / (ln_c ** 2).sum())


def mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, sample std, n); std 0 for one value (as `nanoft report`)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def _grouped(rows: List[Dict[str, Any]], key: str, value: str) -> Dict[str, Tuple[float, float, int]]:
    """Rows by `key` (file order): mean, std and count of `value` over their repeats (seeds)."""
    values: Dict[str, List[float]] = {}
    for r in rows:
        if _finite(r.get(value)):
            values.setdefault(str(r[key]), []).append(float(r[value]))
    return {k: mean_std(v) for k, v in values.items()}


def _bars(ax: Any, names: List[str], stats: List[Tuple[float, float, int]], *, horizontal: bool = False,
          colors: Optional[List[str]] = None) -> Any:
    """Bars of the means; error bars of ±std where some bar averages more than one run."""
    means = [m for m, _, _ in stats]
    errors = [s for _, s, _ in stats] if any(n > 1 for _, _, n in stats) else None
    positions = np.arange(len(names))
    colors = colors or [color(0)] * len(names)
    style = dict(capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"})
    if horizontal:
        bars = ax.barh(positions, means, xerr=errors, color=colors, **style)
        ax.set_yticks(positions, names)
        ax.invert_yaxis()  # first row on top, as in the table
        ax.grid(axis="y", visible=False)
    else:
        bars = ax.bar(positions, means, yerr=errors, color=colors, **style)
        ax.set_xticks(positions, names, rotation=30, ha="right")
        ax.grid(axis="x", visible=False)
    return bars


def _suptitle(fig: Any, title: str, data: Dict[str, Any]) -> None:
    """The figure's title, and under it the device and torch version the result file records."""
    env = data.get("environment") or {}
    device = env.get("gpu") or env.get("cpu") or ""
    where = f"{device}, torch {env['torch']}" if device and env.get("torch") else str(device)
    fig.suptitle(f"{title}\n{where}" if where else title)


# ------------------------------------------------------------------------------------------ pictures
def draw_scaling(data: Dict[str, Any]) -> Any:
    """Time and peak memory against sequence length, log-log, one line per kind; legend: the fitted slope."""
    rows = data["rows"]
    meta = data.get("meta") or {}
    time_key = "fwd_bwd_ms" if any(_finite(r.get("fwd_bwd_ms")) for r in rows) else "fwd_ms"
    fig, (ax_time, ax_mem) = new_figure(2, width=10, height=4.2)
    for i, kind in enumerate(dict.fromkeys(r["kind"] for r in rows)):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["seq"])
        for ax, key in ((ax_time, time_key), (ax_mem, "peak_mb")):
            pts = [(r["seq"], r[key]) for r in mine if _finite(r.get(key)) and r[key] > 0]
            if not pts:
                continue
            n, y = [p[0] for p in pts], [p[1] for p in pts]
            fit = [p for p in pts if p[0] >= FIT_FROM]
            fit = fit if len(fit) >= 2 else pts
            slope = log_log_slope([p[0] for p in fit], [p[1] for p in fit]) if len(fit) >= 2 else float("nan")
            ax.plot(n, y, marker="o", markersize=3.5, color=color(i), label=f"{kind} (slope {slope:.2f})")
    what = "forward + backward" if time_key == "fwd_bwd_ms" else "forward"
    seqs = sorted({r["seq"] for r in rows})
    for ax, ylabel, title in ((ax_time, f"{what} time (ms)", f"Time ({what})"),
                              (ax_mem, "peak memory added (MiB)", "Peak memory")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(seqs, [str(n) for n in seqs])
        ax.minorticks_off()
        ax.set_xlabel("sequence length n (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="upper left", title=f"kind (slope p of y ~ n^p, n ≥ {FIT_FROM})")
    shape = ", ".join(f"{k} {meta[k]}" for k in ("batch", "heads", "head_dim") if k in meta)
    _suptitle(fig, f"Attention scaling: {meta.get('device', '')} {meta.get('dtype', '')}, {shape}", data)
    return fig


def draw_peft(data: Dict[str, Any]) -> Any:
    """Per method: the dev metric, the share of parameters trained (log) and training throughput."""
    rows = data["rows"]
    meta = data.get("meta") or {}
    metric = next((k for r in rows for k, v in r.items() if k not in PEFT_COSTS and k != "method" and _finite(v)),
                  None)
    if metric is None:
        raise ConfigError("PEFT result rows have no metric column", fix="give rows a dev metric (e.g. accuracy)")
    panels = [(metric, f"dev {METRIC_NAMES.get(metric, metric)}", False),
              ("trainable_%", "trainable parameters (% of the model, log)", True),
              ("examples_per_s", "training throughput (examples/s)", False)]
    panels = [p for p in panels if any(_finite(r.get(p[0])) for r in rows)]
    fig, axes = new_figure(len(panels), width=3.6 * len(panels) + 1.2, height=4.2)
    for ax, (key, label, log) in zip(axes, panels):
        stats = _grouped(rows, "method", key)
        names = list(stats)
        colors = ["#999999" if n == "full" else color(0) for n in names]
        if log:  # a bar on a log axis has no true start: dots, with the value written beside
            ax.scatter([stats[n][0] for n in names], range(len(names)), color=colors, zorder=3)
            for i, n in enumerate(names):
                ax.annotate(f"{stats[n][0]:.3g}", (stats[n][0], i), xytext=(5, 0), textcoords="offset points",
                            va="center", fontsize=7)
            ax.set_xscale("log")
            ax.set_yticks(range(len(names)), names)
            ax.set_ylim(len(names) - 0.5, -0.5)  # first row on top, as in the table
            ax.set_xlim(right=max(stats[n][0] for n in names) * 4)
        else:
            bars = _bars(ax, names, [stats[n] for n in names], horizontal=True, colors=colors)
            if key == metric:
                ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=7)
                ax.set_xlim(right=max(m + s for m, s, _ in stats.values()) * 1.18)
        if "full" in stats and key == metric:
            ax.axvline(stats["full"][0], color="#555555", linestyle=":", linewidth=1)
        ax.set_xlabel(label)
        if ax is not axes[0]:
            ax.tick_params(labelleft=False)
    seeds = max(n for _, _, n in _grouped(rows, "method", metric).values())
    runs = (f"mean ± std over {seeds} seeds" if seeds > 1
            else f"one run each (seed {meta.get('seed', '?')}): no error bars")
    task = str(meta.get("task", ""))
    setup = ""
    if _finite(meta.get("epochs")):
        setup += f", {meta['epochs']:g} epoch{'s' * (meta['epochs'] != 1)}"
    if _finite(meta.get("train_subset")):
        setup += f" on {meta['train_subset']:,} train examples"
    _suptitle(fig, f"PEFT methods on {task}{setup}: {runs}", data)
    return fig


def _measures(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Tuple[float, float, int]]]:
    """{measure: {experiment: (mean, std, n)}} from "mean ± std" cells, {"mean", "std", "n"} objects, or
    per-seed rows (a `seed` field, numbers averaged here)."""
    out: Dict[str, Dict[str, Tuple[float, float, int]]] = {}
    if any("seed" in r for r in rows):
        keys = [k for r in rows for k, v in r.items() if k not in ("experiment", "seed") and _finite(v)]
        for key in dict.fromkeys(keys):
            out[key] = _grouped(rows, "experiment", key)
        return out
    for r in rows:
        seeds = int(r["seeds"]) if _finite(r.get("seeds")) else 1
        for key, value in r.items():
            if isinstance(value, str) and _MEAN_STD.match(value) and _MEAN_STD_HEADER.search(key):
                m = _MEAN_STD.match(value)
                out.setdefault(_MEAN_STD_HEADER.sub("", key), {})[str(r["experiment"])] = (
                    float(m.group(1)), float(m.group(2)), seeds)
            elif isinstance(value, dict) and _finite(value.get("mean")) and _finite(value.get("std")):
                n = int(value["n"]) if _finite(value.get("n")) else seeds
                out.setdefault(key, {})[str(r["experiment"])] = (float(value["mean"]), float(value["std"]), n)
    return out


def draw_techniques(data: Dict[str, Any]) -> Any:
    """One panel per measure: a bar per experiment (mean over seeds) with ±std error bars; the baseline's
    mean as a dotted line to compare against."""
    measures = {k: v for k, v in _measures(data["rows"]).items() if len(v) >= 2}
    if not measures:
        raise ConfigError("techniques rows have no measure with 'mean ± std' over seeds for two experiments",
                          fix="give cells like '0.52 ± 0.03' under a '<name> (mean ± std)' column")
    fig, axes = new_figure(len(measures), width=4.2 * len(measures) + 0.6, height=4.2)
    for ax, (name, stats) in zip(axes, measures.items()):
        names = list(stats)
        colors = ["#999999" if n == "baseline" else color(0) for n in names]
        _bars(ax, names, [stats[n] for n in names], colors=colors)
        for i, n in enumerate(names):  # rows per seed: each seed's value as a dot on its bar
            values = [float(r[name]) for r in data["rows"] if "seed" in r and str(r.get("experiment")) == n
                      and _finite(r.get(name))]
            if values:
                ax.scatter(i + np.linspace(-0.2, 0.2, len(values)) * (len(values) > 1), values, s=9,
                           color="#222222", zorder=3)
        if "baseline" in stats:
            ax.axhline(stats["baseline"][0], color="#555555", linestyle=":", linewidth=1)
        seeds = sorted({n for _, _, n in stats.values()})
        dots = "; dots: one seed each" if any("seed" in r for r in data["rows"]) else ""
        ax.set_ylabel(f"mean ± std over {'/'.join(map(str, seeds))} seeds{dots}")
        ax.set_xlabel("experiment")
        ax.set_title(name)
    meta = data.get("meta") or {}
    setup = ", ".join(str(meta[k]) for k in ("model", "task") if meta.get(k))
    if _finite(meta.get("epochs")):
        setup += f", {meta['epochs']:g} epoch{'s' * (meta['epochs'] != 1)}"
    _suptitle(fig, f"{data.get('name', 'techniques')}: {setup}" if setup else data.get("name", "techniques"), data)
    return fig


def draw_speed(data: Dict[str, Any]) -> Any:
    """Grouped bars: per precision, one bar per side (transformers, nanoft bucketed/random), for throughput,
    peak memory and (when measured) dev accuracy."""
    rows = data["rows"]
    meta = data.get("meta") or {}
    panels = [("examples_per_s", "training throughput (examples/s)"), ("peak_memory_mb", "peak memory (MiB)"),
              ("dev_accuracy", "dev accuracy")]
    panels = [p for p in panels if any(_finite(r.get(p[0])) for r in rows)]
    groups = list(dict.fromkeys(str(r.get("precision", "")) for r in rows))
    sides = list(dict.fromkeys(str(r["side"]) for r in rows))
    fig, axes = new_figure(len(panels), width=3.8 * len(panels) + 0.6, height=4.0)
    width = 0.8 / len(sides)
    for ax, (key, label) in zip(axes, panels):
        for j, side in enumerate(sides):
            stats = [mean_std([float(r[key]) for r in rows if str(r["side"]) == side
                               and str(r.get("precision", "")) == g and _finite(r.get(key))] or [float("nan")])
                     for g in groups]
            errors = [s for _, s, _ in stats] if any(n > 1 for _, _, n in stats) else None
            bars = ax.bar(np.arange(len(groups)) + (j - (len(sides) - 1) / 2) * width, [m for m, _, _ in stats],
                          width, yerr=errors, capsize=3, color=color(j), label=side)
            ax.bar_label(bars, fmt="%.3f" if key == "dev_accuracy" else "%.0f", padding=2, fontsize=7)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_xlabel("precision")
        ax.set_ylabel(label)
        ax.grid(axis="x", visible=False)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(sides))
    setup = ", ".join(f"{k.replace('_', ' ')} {meta[k]}" for k in ("batch_size", "steps", "examples") if k in meta)
    _suptitle(fig, f"Training: nanoft vs transformers ({meta.get('device', '')}; {setup})", data)
    return fig


DRAW: Dict[str, Callable[[Dict[str, Any]], Any]] = {
    "scaling": draw_scaling, "peft": draw_peft, "techniques": draw_techniques, "speed": draw_speed}
