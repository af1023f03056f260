"""Experiment files (TOML): named runs × tasks × seeds, run in sequence; and result tables.

    output_root = "runs/techniques"
    seeds = [1, 2, 3]
    tasks = ["cola", "rte"]          # optional: every experiment on every task
    [defaults]                       # TrainConfig keys shared by all experiments
    epochs = 3
    [experiments.baseline]
    [experiments.llrd]
    layerwise_lr_decay = 0.9

Each run lands in `<output_root>/[<task>/]<experiment>/seed<k>/`; a run whose results.json exists
is skipped, and a failing run is recorded and the next one starts. `report` walks a folder of
runs and aggregates per experiment: mean ± std (sample std) and max over seeds.
"""
from __future__ import annotations

import json
import logging
import math
import re
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from nanoft.errors import ConfigError, NanoftError
from nanoft.tables import render_table
from nanoft.train.rundir import RESULTS, RunDir, run_dirs

log = logging.getLogger(__name__)

TOP_LEVEL = {"output_root", "seeds", "tasks", "defaults", "experiments"}


def plan(path: str, only: Optional[List[str]] = None, seeds: Optional[List[int]] = None,
         output_root: Optional[str] = None,
         tasks: Optional[List[str]] = None) -> Tuple[Path, List[Dict[str, Any]]]:
    """The output root and every (name, seed, run directory, TrainConfig) the file asks for, in order."""
    from nanoft.train.config import TrainConfig, read_toml

    spec = read_toml(path)
    for key in spec:
        if key not in TOP_LEVEL:
            raise ConfigError(f"unknown top-level key {key!r}", path=path,
                              fix=f"use {', '.join(sorted(TOP_LEVEL))}; run options go under [defaults]")
    experiments = spec.get("experiments") or {}
    if not isinstance(experiments, dict) or not experiments:
        raise ConfigError("no [experiments.NAME] tables", path=path, fix="add e.g. [experiments.baseline]")
    for name, table in experiments.items():
        if not isinstance(table, dict):
            raise ConfigError(f"experiments.{name} is {table!r}, not a table of run options", path=path,
                              fix=f"write [experiments.{name}] with its options below it (lr = 1e-4, ...)")
    for key, kind, example in (("seeds", list, "seeds = [1, 2, 3]"), ("tasks", list, 'tasks = ["sst2"]'),
                               ("defaults", dict, "[defaults]"), ("output_root", str, 'output_root = "runs/x"')):
        if key in spec and not isinstance(spec[key], kind):
            raise ConfigError(f"{key} is {spec[key]!r}", path=path, fix=f"write it as {example}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec.get("seeds", [])):
        raise ConfigError(f"seeds must be integers, got {spec['seeds']!r}", path=path, fix="e.g. seeds = [1, 2, 3]")
    if only:
        unknown = [n for n in only if n not in experiments]
        if unknown:
            raise ConfigError(f"no experiment named {unknown[0]!r}", path=path,
                              fix=f"choose from {', '.join(experiments)}")
    root = Path(output_root or spec.get("output_root") or "runs")
    seed_list = seeds or spec.get("seeds") or [42]
    file_tasks = spec.get("tasks") or [None]
    if tasks:
        unknown = [t for t in tasks if t not in file_tasks]
        if unknown:
            raise ConfigError(f"task {unknown[0]!r} is not in the file's tasks", path=path,
                              fix=f"choose from {', '.join(str(t) for t in file_tasks)}" if file_tasks != [None]
                              else "the file names no tasks (its runs take their data from [defaults])")
    else:
        tasks = file_tasks
    defaults = spec.get("defaults") or {}
    runs = []
    for task in tasks:
        for name, overrides in experiments.items():
            if only and name not in only:
                continue
            for seed in seed_list:
                values = {**defaults, **(overrides or {}), "seed": int(seed)}
                if task is not None:
                    values["task"] = task
                label = f"{task}/{name}" if task else name
                out = root / (task or "") / name / f"seed{seed}"
                values.update(output=str(out), quiet=True)
                config = TrainConfig.from_dict(values, source=f"{path} [experiments.{name}]")
                runs.append({"name": label, "seed": seed, "output": out, "config": config})
    return root, runs


def resuming(config: Any) -> Any:
    """The config that (re)starts the run in `config.output`: resumed from its checkpoint when one is there (a
    killed run continues), else started afresh over whatever partial folder is left."""
    resume = RunDir(config.output).has_checkpoint()
    return config.replace(resume=resume, overwrite=not resume)


def run_experiments(path: str, only: Optional[List[str]] = None, seeds: Optional[List[int]] = None,
                    output_root: Optional[str] = None, tasks: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the plan; returns {"done", "skipped", "failed", "table"}. Failures do not stop the rest."""
    from nanoft.train import Trainer, TrainingInterrupted

    root, runs = plan(path, only, seeds, output_root, tasks)
    done, skipped, failed = [], [], []
    for i, run in enumerate(runs, 1):
        out: Path = run["output"]
        tag = f"[{i}/{len(runs)}] {run['name']} seed {run['seed']}"
        if RunDir(out).has_results():
            skipped.append(tag)
            log.warning("%s: finished already, skipped", tag)
            continue
        log.warning("%s: running → %s", tag, out)
        try:
            Trainer(resuming(run["config"])).fit()
            done.append(tag)
        except TrainingInterrupted as e:  # Ctrl-C / SIGTERM stops the whole sequence, not just this run
            raise TrainingInterrupted(f"{tag}: {e.message}", path=e.path,
                                      fix="run the same command again: finished runs are skipped and this one "
                                          "resumes from its checkpoint") from None
        except NanoftError as e:
            failed.append(f"{tag}: {e}")
            log.error("%s failed: %s", tag, e)
        except Exception as e:  # an unexpected crash in one run must not stop the others
            failed.append(f"{tag}: {type(e).__name__}: {e}")
            log.error("%s crashed:\n%s", tag, traceback.format_exc())
    table = report_text(str(root), "table") if root.is_dir() else "(no runs)"
    return {"done": done, "skipped": skipped, "failed": failed, "table": table}


# ------------------------------------------------------------------------------ report
_SEED_DIR = re.compile(r"^seed\d+$")


def collect(runs_dir: str) -> Dict[str, List[Dict[str, Any]]]:
    """results.json files under `runs_dir`, grouped by experiment (the folder above seedN/)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError("runs folder does not exist", path=str(root))
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for run in run_dirs(root):
        run_dir = run.path
        group_dir = run_dir.parent if _SEED_DIR.match(run_dir.name) else run_dir
        name = str(group_dir.relative_to(root)) if group_dir != root else root.name
        try:
            groups.setdefault(name, []).append(run.read_results())
        except ConfigError:
            log.warning("skipping unreadable %s", run / RESULTS)
    return groups


def flatten(result: Dict[str, Any]) -> Dict[str, float]:
    """The numbers of one run worth aggregating: best dev metrics, test metrics, time, throughput."""
    out: Dict[str, float] = {}
    best = result.get("best") or {}
    for split, metrics in (best.get("metrics") or {}).items():
        for k, v in metrics.items():
            if k != "loss" and isinstance(v, (int, float)):
                out[f"{split}.{k}"] = float(v)
    for k, v in (result.get("test") or {}).items():
        if k != "loss" and isinstance(v, (int, float)):
            out[f"test.{k}"] = float(v)
    for k, v in (result.get("swa") or {}).items():
        if isinstance(v, (int, float)):
            out[f"swa.{k}"] = float(v)
    sparsity = result.get("sparsity") or {}
    for k in ("pruned", "encoder_linear", "model"):  # pruned runs: sparsity counted three ways
        if isinstance((sparsity.get(k) or {}).get("sparsity"), (int, float)):
            out[f"sparsity.{k}"] = float(sparsity[k]["sparsity"])
    for k in ("train_seconds", "examples_per_s", "peak_memory_mb"):
        if isinstance(result.get(k), (int, float)):
            out[k] = float(result[k])
    return out


def mean_std_max(values: List[float]) -> Dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "max": max(values), "n": n}


def difference(a: List[float], b: List[float]) -> Dict[str, Optional[float]]:
    """Mean of a minus mean of b, its standard error sqrt(s_a²/n_a + s_b²/n_b), Welch's t = diff / se and
    Welch-Satterthwaite degrees of freedom (t and df are None when both samples have no spread)."""
    sa, sb = mean_std_max(list(a)), mean_std_max(list(b))
    va, vb = sa["std"] ** 2 / sa["n"], sb["std"] ** 2 / sb["n"]
    se = math.sqrt(va + vb)
    diff = sa["mean"] - sb["mean"]
    df = ((va + vb) ** 2 / (va ** 2 / max(1, sa["n"] - 1) + vb ** 2 / max(1, sb["n"] - 1))) if va + vb > 0 else None
    return {"diff": diff, "se": se, "welch_t": diff / se if se > 0 else None, "welch_df": df}


def comparisons(groups: Dict[str, List[Dict[str, Any]]], metric: str) -> List[Dict[str, Any]]:
    """Every pair of experiments on `metric` (a `flatten` key such as test.accuracy): the difference of the
    seed means with its standard error, Welch's t and df, and whether |diff| exceeds two standard errors — a
    screen before a table says one row beats another, not a 5% test (with 3 seeds a side, df is 2-4 and the
    two-sided 5% critical t is 2.8-4.3). A pair with a single-seed side has no spread to judge it by:
    exceeds_2se is None there. Experiments without the metric are listed under `missing` of the first row."""
    values = {name: [f[metric] for f in map(flatten, results) if metric in f] for name, results in groups.items()}
    missing = [name for name, v in values.items() if not v]
    if len(missing) == len(values):
        known = sorted({k for results in groups.values() for r in results for k in flatten(r)})
        raise ConfigError(f"no run has the metric {metric!r}", fix=f"compare one of: {', '.join(known)}")
    names = [name for name in values if values[name]]
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = difference(values[a], values[b])
            judged = min(len(values[a]), len(values[b])) >= 2
            rows.append({"a": a, "b": b, "n_a": len(values[a]), "n_b": len(values[b]),
                         "mean_a": mean_std_max(values[a])["mean"], "mean_b": mean_std_max(values[b])["mean"],
                         **d, "exceeds_2se": (d["se"] > 0 and abs(d["diff"]) > 2 * d["se"]) if judged else None})
    if rows and missing:
        rows[0]["missing"] = missing
    return rows


def aggregate(groups: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    rows = []
    for name, results in groups.items():
        flat = [flatten(r) for r in results]
        keys = sorted({k for f in flat for k in f})
        row: Dict[str, Any] = {"experiment": name, "seeds": len(results)}
        for key in keys:
            values = [f[key] for f in flat if key in f]
            row[key] = mean_std_max(values)
        rows.append(row)
    return rows


def report_text(runs_dir: str, fmt: str = "table", by_task: bool = False, compare: Optional[str] = None) -> str:
    """The aggregated table of a runs folder as text (table, markdown, csv or json).

    by_task: one row per experiment and, per task, its main metric (the one `best` is chosen by)
    and the train seconds per run — the experiment × task matrix of a preset with `tasks = [...]`.
    compare: instead, every pair of experiments on this metric (`comparisons`)."""
    groups = collect(runs_dir)
    if not groups:
        return f"no results.json under {runs_dir}"
    if compare:
        rows = comparisons(groups, compare)
        if fmt == "json":
            return json.dumps({"runs_dir": runs_dir, "metric": compare, "comparisons": rows}, indent=1)
        return render_table(*_comparison_rows(rows, compare, fmt == "csv"), fmt)
    if fmt == "json":  # every aggregated number, plus each seed's value, for results files
        rows = aggregate(groups)
        for row in rows:
            flat = [flatten(r) for r in groups[row["experiment"]]]
            for key, stats in row.items():
                if isinstance(stats, dict):
                    stats["values"] = [f[key] for f in flat if key in f]
        return json.dumps({"runs_dir": runs_dir, "experiments": rows}, indent=1)
    header, body = _task_matrix(groups, fmt == "csv") if by_task else _metric_rows(aggregate(groups), fmt == "csv")
    return render_table(header, body, fmt)


_COST_KEYS = ("train_seconds", "examples_per_s", "peak_memory_mb")


def _comparison_rows(rows: List[Dict[str, Any]], metric: str, csv_cells: bool) -> Tuple[List[str], List[List[str]]]:
    """One line per pair: a, b, their means, a - b ± se, Welch's t, and '> 2 SE' where it holds."""
    header = ["a", "b", "n_a", "n_b", f"{metric} a", f"{metric} b", "a - b", "se", "welch_t", "welch_df",
              "|a - b| > 2 se"]
    body = []
    for r in rows:
        t, df = ("" if r[k] is None else (f"{r[k]:.6g}" if csv_cells else f"{r[k]:.{digits}f}")
                 for k, digits in (("welch_t", 2), ("welch_df", 1)))
        numbers = [f"{r[k]:.6g}" if csv_cells else f"{r[k]:.4f}" for k in ("mean_a", "mean_b", "diff", "se")]
        verdict = "n < 2" if r["exceeds_2se"] is None else ("yes" if r["exceeds_2se"] else "no")
        body.append([r["a"], r["b"], str(r["n_a"]), str(r["n_b"]), *numbers, t, df, verdict])
    return header, body


def _cells(stats: Optional[Dict[str, float]], csv_cells: bool, digits: int) -> List[str]:
    """mean ± std / max as one cell, or three for CSV; '-' where there is nothing."""
    if csv_cells:
        return [f"{stats[k]:.6g}" for k in ("mean", "std", "max")] if stats else ["", "", ""]
    if stats is None:
        return ["-"]
    if stats.get("n") == 1:  # no spread to show: a ± 0 would read as a measured zero
        return [f"{stats['mean']:.{digits}f} (one seed)"]
    return [f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} / {stats['max']:.{digits}f}"]


def _metric_rows(rows: List[Dict[str, Any]], csv_cells: bool) -> Tuple[List[str], List[List[str]]]:
    """Every aggregated key of every experiment, costs last."""
    keys = sorted({k for r in rows for k in r if k not in ("experiment", "seeds")}, key=lambda k: (k in _COST_KEYS, k))
    header = ["experiment", "seeds"]
    for k in keys:
        header += [f"{k}_mean", f"{k}_std", f"{k}_max"] if csv_cells else [f"{k} (mean ± std / max)"]
    body = []
    for r in rows:
        line = [r["experiment"], str(r["seeds"])]
        for k in keys:
            line += _cells(r.get(k), csv_cells, 1 if k in _COST_KEYS else 4)
        body.append(line)
    return header, body


def _task_matrix(groups: Dict[str, List[Dict[str, Any]]], csv_cells: bool) -> Tuple[List[str], List[List[str]]]:
    """Experiments as rows; per task, seeds, main metric (mean ± std / max) and train seconds per run."""
    cells: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    metric_of: Dict[str, str] = {}
    for name, results in groups.items():
        task = str(results[0].get("task") or "-")
        experiment = name.split("/", 1)[1] if name.startswith(f"{task}/") else name
        cells[(experiment, task)] = results
        metric_of.setdefault(task, str(results[0].get("main_metric") or "score"))
    experiments = list(dict.fromkeys(e for e, _ in cells))
    tasks = list(metric_of)
    header = ["experiment"]
    for t in tasks:
        m = metric_of[t]
        header += ([f"{t}_seeds", f"{t}_{m}_mean", f"{t}_{m}_std", f"{t}_{m}_max", f"{t}_train_s_mean"] if csv_cells
                   else [f"{t} seeds", f"{t} {m} (mean ± std / max)", f"{t} train s/run"])
    body = []
    for e in experiments:
        line = [e]
        for t in tasks:
            results = cells.get((e, t), [])
            scores = [r["best"]["score"] for r in results if isinstance((r.get("best") or {}).get("score"), (int, float))]
            seconds = [r["train_seconds"] for r in results if isinstance(r.get("train_seconds"), (int, float))]
            line.append(str(len(results)))
            line += _cells(mean_std_max(scores) if scores else None, csv_cells, 4)
            if not seconds:
                line.append("" if csv_cells else "-")
            else:
                mean_s = mean_std_max(seconds)["mean"]
                line.append(f"{mean_s:.6g}" if csv_cells else f"{mean_s:.0f}")
        body.append(line)
    return header, body
