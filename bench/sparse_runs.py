"""Sparse-training result tables from `nanoft run` folders: each experiment's metric over seeds, the fraction of
the dense experiment's it keeps, the difference in standard errors, and the sparsity counted three ways.

    nanoft bench sparse-runs runs/sparse-cola --metric matthews_corrcoef --name sparse_cola

One row per experiment (the folder above seedN/), read from its runs' config.toml and results.json:
the task metric on dev at the reported model (`best`: the best evaluation once the target sparsity is reached,
what RUN/best holds) and at the end of training (`final`), mean ± std over seeds; `of dense` = mean / the dense
experiment's mean; Δ and Welch's t against dense; the zeros of the weights as fractions of the pruned tensors,
of all encoder linear weights, and of every parameter (embeddings included); examples/s.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from nanoft.bench.common import compare, format_table, mean_std, write_results
from nanoft.bench.peft_runs import _runs
from nanoft.errors import ConfigError

COLUMNS = ("experiment", "prune", "sparsity", "kd", "schedule", "epochs", "seeds", "best", "of_dense", "diff_points",
           "welch_t", "final", "pruned_%", "encoder_linear_%", "model_%", "examples_per_s")


def _pm(values: Sequence[float], digits: int = 4) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _percent(runs: List[Dict[str, Any]], kind: str) -> Optional[float]:
    values = [((r["results"].get("sparsity") or {}).get(kind) or {}).get("sparsity") for r in runs]
    return None if any(v is None for v in values) else round(100 * sum(values) / len(values), 1)


def experiment_rows(root: Path, metric: str, baseline: str = "dense") -> List[Dict[str, Any]]:
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for run in _runs(root):
        name = run["path"].parent.name if run["path"].name.startswith("seed") else run["path"].name
        groups.setdefault(name, []).append(run)
    if baseline not in groups:
        raise ConfigError(f"no {baseline!r} experiment under {root}", fix="run the dense experiment first")
    scores: Dict[str, Dict[str, List[float]]] = {}
    for name, runs in groups.items():
        best, final = [], []
        for run in runs:
            r = run["results"]
            best_metrics = (r.get("best") or {}).get("metrics", {}).get("dev") or {}
            final_metrics = (r.get("final") or {}).get("dev") or {}
            if metric not in best_metrics or metric not in final_metrics:
                raise ConfigError(f"{run['path']}: no dev {metric!r} in results.json",
                                  fix=f"pick one of {sorted(best_metrics)}")
            best.append(float(best_metrics[metric]))
            final.append(float(final_metrics[metric]))
        scores[name] = {"best": best, "final": final}
    dense = scores[baseline]["best"]
    rows = []
    for name, runs in groups.items():
        c = runs[0]["config"]
        best = scores[name]["best"]
        diff = compare(best, dense) if name != baseline else {}
        if len(best) < 2 or len(dense) < 2:  # no spread on one side: a t would pretend to know it
            diff = {**diff, "welch_t": None}
        speed = [float(r["results"]["examples_per_s"]) for r in runs]
        rows.append({
            "experiment": name, "prune": c.get("prune") or "-",
            "sparsity": c.get("sparsity") if c.get("prune") else "-",
            "kd": "yes" if c.get("distill_from") else "no", "schedule": c.get("schedule", "linear"),
            "epochs": c.get("epochs", "-"),
            "seeds": sorted(int(r["config"]["seed"]) for r in runs),
            "best": _pm(best), "best_mean": round(mean_std(best)[0], 4),
            "per_seed": [round(v, 4) for v in best],
            "of_dense": f"{100 * mean_std(best)[0] / mean_std(dense)[0]:.1f}%",
            "diff_points": round(100 * diff["diff"], 2) if diff else "-",
            "welch_t": round(diff["welch_t"], 2) if diff and diff.get("welch_t") is not None else "-",
            "final": _pm(scores[name]["final"]),
            "pruned_%": _percent(runs, "pruned") or "-", "encoder_linear_%": _percent(runs, "encoder_linear") or "-",
            "model_%": _percent(runs, "model") or "-",
            "examples_per_s": round(sum(speed) / len(speed), 1),
        })
    rows.sort(key=lambda r: (r["experiment"] != baseline, r["experiment"]))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="nanoft bench sparse-runs", description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="a `nanoft run` output root of one task (e.g. runs/sparse-cola)")
    parser.add_argument("--metric", default="accuracy", help="the dev metric (accuracy, matthews_corrcoef, ...)")
    parser.add_argument("--baseline", default="dense", help="the dense experiment's name")
    parser.add_argument("--order", default=None, help="experiment names, comma-separated, in the rows' order")
    parser.add_argument("--name", default=None, help="results file name in bench/results (none: print only)")
    parser.add_argument("--notes", default=None, help="a Markdown file whose text goes under the table")
    args = parser.parse_args(argv)
    root = Path(args.runs)
    rows = experiment_rows(root, args.metric, args.baseline)
    if args.order:
        order = [n.strip() for n in args.order.split(",")]
        rows.sort(key=lambda r: order.index(r["experiment"]) if r["experiment"] in order else len(order))
    if args.name:
        notes = Path(args.notes).read_text() if args.notes else ""
        write_results(args.name, rows, meta={"runs": root.as_posix(), "metric": f"dev.{args.metric}"},
                      columns=COLUMNS, notes=notes.strip())
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
