"""Task-adaptive pretraining (TAPT, Gururangan et al. 2020): does continuing a checkpoint's masked-LM training on
a task's own train texts help fine-tuning on that task?

    nanoft bench tapt --tasks sst2,agnews,imdb --data-dir ../shared/data          # 3 seeds with and without
    nanoft bench tapt --tasks sst2 --pretrain-steps 100 --seeds 5 --name tapt_sst2

For each task:
1. the checkpoint's masked-LM perplexity on the task's held-out texts (a fixed, seeded mask);
2. masked-LM training on the task's train texts (labels unused) for --pretrain-steps, as `nanoft pretrain --task`;
3. the perplexity again: the same blocks under the same mask;
4. fine-tuning from the checkpoint and from the TAPT model, --seeds each, one recipe: the task metric's mean ± std
   per arm, the difference (TAPT - base), its standard error and Welch's t.
Runs land in --runs-dir/TASK/{pretrain,base/seedK,tapt/seedK}; a finished run is reused and a killed one resumes
from its checkpoint, so a rerun continues.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from nanoft.bench.common import RESULTS_DIR, compare, format_table, mean_std, write_results
from nanoft.errors import ConfigError
from nanoft.tasks import resolve_data_dir

# fine-tuning length per task: IMDB reviews average ~300 tokens, the sentence tasks fit in 128
MAX_LENGTH = {"imdb": 512}
COLUMNS = ["task", "pretrain_steps", "pretrain_tokens", "pretrain_min", "ppl_before", "ppl_after", "metric", "split",
           "seeds", "base", "tapt", "diff", "se", "welch_t", "verdict"]


def finished(run_dir: Path) -> Optional[Dict[str, Any]]:
    """results.json of a finished run, or None."""
    from nanoft.train.rundir import RunDir

    return RunDir(run_dir).read_results() if RunDir(run_dir).has_results() else None


def score(results: Dict[str, Any], metric: str) -> tuple:
    """(split, value): the test metric when the task has a labelled test split (scored once, with the model the
    dev split chose), else the best dev metric."""
    if results.get("test") and metric in results["test"]:
        return "test", float(results["test"][metric])
    split, metrics = next(iter(results["best"]["metrics"].items()))
    return split, float(metrics[metric])


def run_task(task_name: str, args: argparse.Namespace, log: Callable[[str], None]) -> Dict[str, Any]:
    """Perplexity before, TAPT, perplexity after, fine-tuning both arms: one table row plus every run's score."""
    from nanoft.experiment import resuming
    from nanoft.tasks import get_task
    from nanoft.train import TrainConfig, Trainer
    from nanoft.train.corpus import load_corpus
    from nanoft.train.pretrain import PretrainConfig, evaluate_documents, pretrain
    from nanoft.weights import default_model_path

    task = get_task(task_name)
    root = Path(args.runs_dir) / task.name
    base_model = args.model or str(default_model_path())
    pcfg = PretrainConfig(task=task.name, data_dir=args.data_dir, model=base_model, max_length=args.block,
                          max_steps=args.pretrain_steps, batch_size=args.batch_size, lr=args.pretrain_lr,
                          mask_rate=args.mask_rate, seed=0, precision=args.precision, output=str(root / "pretrain"),
                          quiet=True)
    _, (dev_texts, dev_pairs), _ = load_corpus(pcfg)

    def perplexity(model_dir: str) -> float:
        return evaluate_documents(model_dir, dev_texts, dev_pairs, args.block, mask_rate=args.mask_rate,
                                  source=f"{task.name} held-out texts")["perplexity"]

    before = perplexity(base_model)
    pre = finished(root / "pretrain") or pretrain(resuming(pcfg), progress=not args.quiet)
    tapt_model = str(root / "pretrain" / "best")
    after = perplexity(tapt_model)
    log(f"{task.name}: perplexity {before:.2f} -> {after:.2f} after {pre['steps']} masked-LM steps "
        f"({pre['train_seconds'] / 60:.1f} min)")

    scores: Dict[str, List[float]] = {"base": [], "tapt": []}
    runs: List[Dict[str, Any]] = []
    split = ""
    for seed in args.seeds:
        for arm, model in (("base", base_model), ("tapt", tapt_model)):  # arms interleaved per seed
            out = root / arm / f"seed{seed}"
            config = TrainConfig(task=task.name, data_dir=args.data_dir, model=model, seed=seed,
                                 train_subset=args.train_subset, epochs=args.epochs, lr=args.lr,
                                 batch_size=args.batch_size, max_length=MAX_LENGTH.get(task.name, args.max_length),
                                 precision=args.precision, output=str(out), quiet=True)
            results = finished(out) or Trainer(resuming(config), progress=not args.quiet).fit()
            split, value = score(results, task.main_metric)
            scores[arm].append(100 * value)
            runs.append({"task": task.name, "arm": arm, "seed": seed, "split": split, task.main_metric: value,
                         "train_seconds": results["train_seconds"], "run": str(out)})
            log(f"{task.name} {arm} seed {seed}: {split} {task.main_metric} {value:.4f}")
    c = compare(scores["tapt"], scores["base"])
    (mb, sb), (mt, st) = mean_std(scores["base"]), mean_std(scores["tapt"])
    t = c["welch_t"]
    verdict = ("no difference beyond noise (Welch t within ±2)" if t is None or abs(t) < 2
               else "TAPT better" if t > 0 else "TAPT worse")
    row = {"task": task.name, "pretrain_steps": pre["steps"],
           "pretrain_tokens": pre["steps"] * args.batch_size * args.block,
           "pretrain_min": round(pre["train_seconds"] / 60, 1), "ppl_before": round(before, 2),
           "ppl_after": round(after, 2), "metric": task.main_metric, "split": split,
           "seeds": len(args.seeds), "base": f"{mb:.2f} ± {sb:.2f}", "tapt": f"{mt:.2f} ± {st:.2f}",
           "diff": round(c["diff"], 2), "se": round(c["se"], 2), "welch_t": None if t is None else round(t, 2),
           "verdict": verdict}
    return {"row": row, "runs": runs}


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nanoft bench tapt", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", default="sst2,agnews,imdb", help="comma-separated tasks (single-text or pairs)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated fine-tuning seeds, each arm")
    p.add_argument("--model", default=None, help="checkpoint to continue [default: installed MiniLM]")
    p.add_argument("--data-dir", default=None, help="data folder [default: $NANOFT_DATA_DIR]")
    p.add_argument("--pretrain-steps", type=int, default=300, help="masked-LM optimizer steps per task")
    p.add_argument("--pretrain-lr", type=float, default=1e-4, help="masked-LM peak learning rate")
    p.add_argument("--block", type=int, default=128, help="masked-LM block length (packed)")
    p.add_argument("--mask-rate", type=float, default=0.15, help="masked-LM mask rate")
    p.add_argument("--train-subset", type=int, default=2000, help="fine-tuning examples (a seeded subset)")
    p.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning peak learning rate")
    p.add_argument("--batch-size", type=int, default=16, help="batch size, pretraining and fine-tuning")
    p.add_argument("--max-length", type=int, default=128, help="fine-tuning max tokens (IMDB: 512)")
    p.add_argument("--precision", default="auto", help="training precision: auto (bf16 where native), fp32, bf16")
    p.add_argument("--runs-dir", default="runs/tapt", help="where the runs go (finished ones are reused)")
    p.add_argument("--name", default="tapt", help="result file name in --out-dir")
    p.add_argument("--out-dir", default=None, help="result folder [default: bench/results]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r} is not a comma-separated list of integers",
                          fix="e.g. --seeds 1,2,3") from None
    if args.pretrain_steps < 1:
        raise ConfigError(f"--pretrain-steps must be ≥ 1, got {args.pretrain_steps}")
    args.data_dir = str(resolve_data_dir(args.data_dir))

    def log(line: str) -> None:
        print(line, flush=True)

    rows, runs = [], []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        result = run_task(task, args, log)
        rows.append(result["row"])
        runs += result["runs"]
        if args.name:  # written after each task: a partial file survives a kill
            meta = {"model": args.model or "installed MiniLM-L6-H384", "masked-LM": f"{args.pretrain_steps} steps, "
                    f"batch {args.batch_size} x {args.block}-token packed blocks, lr {args.pretrain_lr}, mask rate "
                    f"{args.mask_rate}, linear schedule, precision {args.precision}; perplexity (in fp32) on the "
                    f"task's held-out texts with one fixed seeded mask (before and after: the same blocks, the same "
                    f"masked positions)",
                    "fine-tuning": f"{args.train_subset} training examples (a seeded subset), {args.epochs:g} epochs, "
                                   f"batch {args.batch_size}, lr {args.lr}, max length {args.max_length} (IMDB 512), "
                                   f"precision {args.precision}",
                    "seeds": args.seeds}
            paths = write_results(args.name, rows, meta=meta, columns=COLUMNS,
                                  out_dir=Path(args.out_dir) if args.out_dir else RESULTS_DIR, notes=NOTES)
            payload = json.loads(paths["json"].read_text(encoding="utf-8"))
            payload["runs"] = runs
            from nanoft.io import atomic_write_text

            atomic_write_text(paths["json"], json.dumps(payload, indent=2) + "\n")
    print(format_table(rows, COLUMNS))


NOTES = ("How to read it: base and tapt are the task metric x100, mean ± std over the fine-tuning seeds (the same "
         "seeds, hence the same training subsets and orders, in both arms); diff = tapt - base, se = sqrt(s1²/n1 + "
         "s2²/n2), welch_t = diff / se. The checkpoint's perplexity 'before' uses a masked-LM head the checkpoint may "
         "lack (a sentence encoder such as all-MiniLM-L6-v2 ships none): the missing part is drawn from a fixed seed, "
         "so 'before' measures the encoder with an untrained head and is high for that reason too.")


if __name__ == "__main__":
    main()
