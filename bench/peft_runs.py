"""PEFT result tables from `nanoft run` folders: the LoRA recipe sweep and the seeded method comparisons.

    nanoft bench peft-runs sweep runs/lora-sweep-sst2 runs/lora-sweep-cola --name lora_sweep
    nanoft bench peft-runs seeds runs/peft-sst2 --metric dev.accuracy --name peft_sst2_seeds

`sweep`: one row per run (one seed each): method, targets, r, alpha, learning rate, the dev metric after
each epoch and the best one, examples/s; the JSON also names, per task and method, the winner on dev.
`seeds`: one row per experiment (the folder above seedN/): the metric's mean ± std over seeds, the dev
metric after each epoch (mean over seeds), trainable
parameters, adapter file size (the run's RUN/best/adapter/adapter.safetensors, what `peft.save_adapter`
writes), examples/s and peak memory (mean ± std), and their ratios to the `full` experiment's.

Everything is read from the run directories (config.toml, results.json, metrics.jsonl), so a table can be
rebuilt at any time from the runs the experiment files made.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from nanoft.bench.common import format_table, write_results
from nanoft.experiment import flatten, mean_std_max
from nanoft.peft.targets import ALL_LINEAR
from nanoft.train.config import read_toml
from nanoft.train.rundir import run_dirs


def targets_label(config: Dict[str, Any]) -> str:
    """`all-linear`, `query,value`, ... for a LoRA-family run; '-' for methods without targets."""
    targets = (config.get("peft_options") or {}).get("targets")
    if targets is None:
        if not config.get("peft"):
            return "-"
        from nanoft import peft

        targets = peft.options_of(config["peft"]).get("targets")
        if targets is None:
            return "-"
    return "all-linear" if sorted(targets) == sorted(ALL_LINEAR) else ",".join(targets)


def _option(config: Dict[str, Any], name: str) -> Any:
    """A PEFT option of a run: its own value, else the method's registry default."""
    if not config.get("peft"):
        return None
    given = (config.get("peft_options") or {}).get(name)
    if given is not None:
        return given
    from nanoft import peft

    return peft.options_of(config["peft"]).get(name)


def _runs(root: Path) -> List[Dict[str, Any]]:
    """Every finished run under `root`: its path, config, results and evaluations (metrics.jsonl)."""
    found = []
    for run in run_dirs(root):
        if not run.has_results():
            continue
        evals = []
        metrics = run.path / "metrics.jsonl"
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                record = json.loads(line)
                if "eval" in record:
                    evals.append(record)
        found.append({"path": run.path, "config": read_toml(run.path / "config.toml"),
                      "results": run.read_results(), "evals": evals})
    return found


def sweep_rows(roots: Sequence[Path]) -> List[Dict[str, Any]]:
    rows = []
    for root in roots:
        for run in _runs(root):
            c, r = run["config"], run["results"]
            metric = r["main_metric"]
            per_epoch = [round(e["eval"]["dev"][metric], 4) for e in run["evals"] if "dev" in e["eval"]]
            rows.append({
                "task": r["task"], "run": str(run["path"].relative_to(root)), "method": c.get("peft") or "full",
                "targets": targets_label(c), "r": _option(c, "r"), "alpha": _option(c, "alpha"), "lr": c["lr"],
                "epochs": c.get("epochs"), "train_subset": c.get("train_subset"), "seed": c["seed"],
                "metric": metric, "dev_by_epoch": per_epoch, "dev_best": round(r["best"]["score"], 4),
                "trainable": r.get("trainable_parameters"),
            })
    rows.sort(key=lambda r: (r["task"], r["method"] != "full", r["method"], r["targets"], -(r["alpha"] or 0), r["lr"]))
    return rows


def winners(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """{task: {method: the row with the best dev score}} (first row wins a tie)."""
    best: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for row in rows:
        current = best.setdefault(row["task"], {}).get(row["method"])
        if current is None or row["dev_best"] > current["dev_best"]:
            best[row["task"]][row["method"]] = row
    return best


def _adapter_mb(run_path: Path) -> Optional[float]:
    adapter = run_path / "best" / "adapter" / "adapter.safetensors"
    return adapter.stat().st_size / 2**20 if adapter.is_file() else None


def _pm(stats: Dict[str, float], digits: int) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def seed_rows(root: Path, metric: str, baseline: str = "full") -> List[Dict[str, Any]]:
    """One row per experiment under `root`: mean ± std over its seeds and the ratios to `baseline`'s."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for run in _runs(root):
        name = run["path"].parent.name if run["path"].name.startswith("seed") else run["path"].name
        groups.setdefault(name, []).append(run)
    rows = []
    for name, runs in groups.items():
        c = runs[0]["config"]
        flat = [flatten(run["results"]) for run in runs]
        if any(metric not in f for f in flat):
            raise SystemExit(f"{name}: some runs have no {metric!r}; they have {sorted(flat[0])}")
        score = mean_std_max([f[metric] for f in flat])
        speed = mean_std_max([f["examples_per_s"] for f in flat])
        memory = mean_std_max([f["peak_memory_mb"] for f in flat])
        sizes = [s for s in (_adapter_mb(run["path"]) for run in runs) if s is not None]
        results = runs[0]["results"]
        main = results["main_metric"]
        curves = [[e["eval"]["dev"][main] for e in run["evals"] if "dev" in e["eval"]] for run in runs]
        by_epoch = [round(sum(c[i] for c in curves) / len(curves), 4) for i in range(min(map(len, curves)))]
        rows.append({
            "experiment": name, "method": c.get("peft") or "full", "targets": targets_label(c),
            "lr": c["lr"], "seeds": [run["config"]["seed"] for run in runs],
            f"{metric}": _pm(score, 4), "mean": round(score["mean"], 4), "std": round(score["std"], 4),
            "per_seed": [round(f[metric], 4) for f in flat], f"dev {main} by epoch (mean)": by_epoch,
            "trainable": results.get("trainable_parameters"),
            "trainable_%": round(100 * results["trainable_parameters"] / results["parameters"], 3),
            "adapter_MB": round(sum(sizes) / len(sizes), 3) if sizes else None,
            "examples_per_s": _pm(speed, 1), "examples_per_s_mean": round(speed["mean"], 1),
            "peak_memory_MB": _pm(memory, 0), "peak_memory_MB_mean": round(memory["mean"], 1),
        })
    base = next((r for r in rows if r["experiment"] == baseline), None)
    for row in rows:
        if base is not None:
            row["Δ_vs_full_points"] = round(100 * (row["mean"] - base["mean"]), 2)
            row["speed_vs_full"] = round(row["examples_per_s_mean"] / base["examples_per_s_mean"], 2)
            row["memory_vs_full"] = round(row["peak_memory_MB_mean"] / base["peak_memory_MB_mean"], 3)
    return rows


SEED_COLUMNS = ("experiment", "method", "targets", "lr", "seeds", "Δ_vs_full_points", "trainable", "trainable_%",
                "adapter_MB", "examples_per_s", "speed_vs_full", "peak_memory_MB", "memory_vs_full")
SWEEP_COLUMNS = ("task", "method", "targets", "r", "alpha", "lr", "epochs", "train_subset", "dev_by_epoch",
                 "dev_best", "trainable")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("sweep", "seeds"), help="sweep: one row per run; seeds: per experiment")
    parser.add_argument("runs", nargs="+", help="`nanoft run` output roots")
    parser.add_argument("--metric", default="dev.accuracy",
                        help="seeds: the score to aggregate, as `nanoft report` names it (dev.accuracy, "
                             "test.accuracy, dev.matthews_corrcoef) [default: dev.accuracy]")
    parser.add_argument("--name", default=None, help="results file name in bench/results (none: print only)")
    parser.add_argument("--order", default=None,
                        help="seeds: experiment names, comma-separated, in the order the rows should take")
    parser.add_argument("--notes", default=None, help="a Markdown file whose text goes under the table")
    parser.add_argument("--meta", default=None, help="JSON object of settings to record beside the rows")
    args = parser.parse_args(argv)
    roots = [Path(p) for p in args.runs]
    meta: Dict[str, Any] = {"runs": [str(p) for p in roots], **json.loads(args.meta or "{}")}
    if args.mode == "sweep":
        rows = sweep_rows(roots)
        meta["winners_on_dev"] = {task: {m: {k: row[k] for k in ("targets", "alpha", "lr", "dev_best")}
                                         for m, row in by_method.items()}
                                  for task, by_method in winners(rows).items()}
        columns: Sequence[str] = SWEEP_COLUMNS
    else:
        rows = [row for root in roots for row in seed_rows(root, args.metric)]
        if args.order:
            order = [name.strip() for name in args.order.split(",")]
            rows.sort(key=lambda r: order.index(r["experiment"]) if r["experiment"] in order else len(order))
        meta["metric"] = args.metric
        by_epoch = tuple(dict.fromkeys(k for r in rows for k in r if k.endswith("by epoch (mean)")))
        columns = SEED_COLUMNS[:5] + (args.metric,) + by_epoch + SEED_COLUMNS[5:]
    if args.name:
        notes = Path(args.notes).read_text() if args.notes else ""
        write_results(args.name, rows, meta=meta, columns=columns, notes=notes.strip())
    print(format_table(rows, columns))


if __name__ == "__main__":
    main()
