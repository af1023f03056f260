"""A small BERT pretrained from scratch, judged as the old project judged its BERTs: the masked-LM curve and the
GLUE table of checkpoints along it, next to the same architecture at random init and a pretrained reference.

    nanoft pretrain --from-scratch --task sst2,cola,rte,agnews,imdb --export-every 400 --output runs/scratch/bert ...
    nanoft glue --model runs/scratch/bert/step-400 --output-root runs/glue-scratch ...      (one per checkpoint)
    nanoft bench scratch --run runs/scratch/bert --steps 0,400,800,1600 --glue-root runs/glue-scratch

This benchmark trains nothing: it reads the pretraining run (its logged losses and held-out evaluations) and the
`nanoft glue` runs already made for RUN/step-N/ (step 0 is the random initialisation) and for each --reference
model, computes every model's perplexity on the held-out texts of --dev-tasks (the fixed seeded mask), and writes
one row per model in the GLUE table's shape plus the mean ± std over seeds of each task.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from nanoft.bench.common import RESULTS_DIR, write_results
from nanoft.errors import ConfigError, DataError
from nanoft.io import atomic_write_text


def curve(run: Path, tokens_per_step: int) -> List[Dict[str, Any]]:
    """One row per held-out evaluation: step, tokens seen, the mean logged training loss since the previous
    evaluation, and the held-out loss and perplexity."""
    rows, window = [], []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "eval" in record:
            metrics = next(iter(record["eval"].values()))
            rows.append({"step": record["step"], "tokens": record["step"] * tokens_per_step,
                         "train_loss": round(sum(window) / len(window), 4) if window else None,
                         "heldout_loss": round(metrics["loss"], 4), "heldout_ppl": round(metrics["perplexity"], 2)})
            window = []
        elif "loss" in record:
            window.append(float(record["loss"]))
    return rows


def _run_cost(run: Path) -> Dict[str, Any]:
    """Training minutes and tokens/s of a finished run (empty while it runs)."""
    path = run / "results.json"
    if not path.is_file():
        return {}
    results = json.loads(path.read_text(encoding="utf-8"))
    return {"train_minutes": round(results["train_seconds"] / 60, 1), "tokens_per_s": round(results["tokens_per_s"])}


def glue_rows(models: Sequence[tuple], glue_root: str, data_dir: Optional[str], dev_tasks: Optional[str],
              block: int) -> tuple:
    """(JSON rows, the GLUE table in Markdown): (label, model directory, tokens seen or None) per model; the
    perplexity on `block`-token blocks, as the pretraining run evaluated."""
    from nanoft.glue import COLUMNS, collect_runs, model_label, model_perplexity, render, resolve_model, table_row

    rows, lines = [], []
    for label, directory, tokens in models:
        runs = collect_runs(Path(glue_root) / model_label(resolve_model(directory)))
        if not runs:
            raise DataError(f"no `nanoft glue` runs for {directory}", path=glue_root,
                            fix=f"run nanoft glue --model {directory} --output-root {glue_root} first")
        glue, mean, std = (table_row(runs, rule) for rule in ("glue", "mean", "std"))
        perplexity = model_perplexity(directory, None, block, dev_tasks, data_dir) if dev_tasks else None
        row: Dict[str, Any] = {"model": label, "tokens": tokens,
                               "heldout_ppl": None if perplexity is None else round(perplexity, 2)}
        for column in COLUMNS:
            if glue[column] is not None:
                row[column] = round(glue[column], 1)
        for column in COLUMNS[2:]:
            if mean[column] is not None:
                row[f"{column} mean ± std"] = f"{mean[column]:.1f} ± {std[column]:.1f}"
        row["seeds"] = glue["_seeds"]
        row["per_seed"] = {task: [{split: {k: round(v, 4) for k, v in m.items() if k != "loss"}
                                   for split, m in scores.items()} for scores in seeds_scores]
                           for task, seeds_scores in runs.items()}
        rows.append(row)
        lines.append((label, glue, perplexity))
    return rows, render(lines, "markdown")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nanoft bench scratch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="the from-scratch pretraining run (with --export-every)")
    p.add_argument("--steps", default="0,400,800,1600", help="the RUN/step-N/ checkpoints in the table")
    p.add_argument("--reference", action="append", default=[], metavar="LABEL=DIR",
                   help="a pretrained model's row (repeatable); DIR 'installed' is the installed MiniLM")
    p.add_argument("--glue-root", default="runs/glue", help="--output-root of the `nanoft glue` runs")
    p.add_argument("--seeds", default="1,2,3", help="the glue runs' seeds (for the record)")
    p.add_argument("--data-dir", default=None, help="data folder [default: $NANOFT_DATA_DIR]")
    p.add_argument("--dev-tasks", default=None,
                   help="perplexity on these tasks' held-out texts [default: the run's --task]")
    p.add_argument("--glue-command", default="", help="the `nanoft glue` recipe used, for the record")
    p.add_argument("--name", default="scratch_glue", help="result file name")
    p.add_argument("--out-dir", default=None, help="result folder [default: bench/results]")
    args = p.parse_args(argv)
    from nanoft.train.config import read_toml
    from nanoft.weights import default_model_path

    run = Path(args.run)
    if not (run / "metrics.jsonl").is_file():
        raise DataError("not a pretraining run (no metrics.jsonl)", path=str(run), fix="pass the run's folder")
    config = read_toml(str(run / "config.toml"))
    tokens_per_step = int(config["batch_size"]) * int(config.get("grad_accum", 1)) * int(config["max_length"])
    dev_tasks = args.dev_tasks or config.get("task")
    models = []
    for step in (int(s) for s in args.steps.split(",")):
        folder = run / f"step-{step}"
        if not (folder / "config.json").is_file():
            raise DataError(f"no checkpoint for step {step}", path=str(folder),
                            fix="pick steps the run exported (--export-every)")
        label = "random init (step 0)" if step == 0 else f"scratch step {step}"
        models.append((label, str(folder), step * tokens_per_step))
    for item in args.reference:
        label, _, directory = item.partition("=")
        if not directory:
            raise ConfigError(f"--reference {item!r}", fix="write LABEL=DIR, e.g. MiniLM=installed")
        models.append((label, str(default_model_path()) if directory == "installed" else directory, None))
    rows, table = glue_rows(models, args.glue_root, args.data_dir, dev_tasks, int(config["max_length"]))
    points = curve(run, tokens_per_step)
    step0 = run / "step-0" / "config.json"  # the built model's sizes (the run's config may leave them to defaults)
    built = json.loads(step0.read_text()) if step0.is_file() else {}
    sizes = {"family": config.get("family"), **{k: built.get(k) for k in ("num_hidden_layers", "hidden_size",
                                                                          "num_attention_heads", "intermediate_size",
                                                                          "vocab_size")}}
    meta = {"pretraining": {"run": run.as_posix(), "corpus": config.get("task") or config.get("text_file"),
                            "sizes": sizes, "steps": points[-1]["step"] if points else None,
                            "tokens_per_step": tokens_per_step, "lr": config.get("lr"),
                            "mask_rate": config.get("mask_rate"), "seed": config.get("seed"),
                            **_run_cost(run)},
            "glue": {"root": args.glue_root, "seeds": args.seeds, "command": args.glue_command},
            "perplexity": f"held-out texts of {dev_tasks}, fixed seeded mask (eval_mask_seed 0), fp32",
            "curve": points}
    curve_md = ["| step | tokens | train loss | held-out loss | held-out perplexity |", "|---:|---:|---:|---:|---:|"]
    curve_md += [f"| {r['step']} | {r['tokens']:,} | {r['train_loss']} | {r['heldout_loss']} | {r['heldout_ppl']} |"
                 for r in points]
    notes = "\n".join(["## The GLUE table (the old project's shape: max over seeds for CoLA/RTE, mean for SST-2)", "",
                       table, "", "## Masked-LM curve of the pretraining run", ""] + curve_md)
    columns = [k for k in rows[0] if k != "per_seed"]  # per-seed scores: in the JSON only
    out = write_results(args.name, rows, meta={k: v for k, v in meta.items() if k != "curve"}, columns=columns,
                        out_dir=Path(args.out_dir) if args.out_dir else RESULTS_DIR, notes=notes)
    payload = json.loads(out["json"].read_text())
    payload["meta"]["curve"] = points  # in the JSON in full; the Markdown has it as a table
    atomic_write_text(out["json"], json.dumps(payload, indent=2, default=str) + "\n")
    print(table)
    print(f"wrote {out['markdown']} and {out['json']}")


if __name__ == "__main__":
    main()
