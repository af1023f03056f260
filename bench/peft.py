"""PEFT methods compared on one task: dev score, trainable parameters, adapter file size, speed, memory.

    nanoft bench peft --task sst2 --methods full,lora-r4,lora,lora-r16,rslora,dora,houlsby,pfeiffer,bitfit,ia3

`lora-rN` (also rslora-rN, dora-rN) is that method at rank N with alpha = 2N, so alpha/r stays at the
default 16/8. Learning rates and options are each method's recipe defaults (the PEFT registry). Every method fine-tunes the same checkpoint with the same data, seed, batch size and number of
steps through the real trainer; only the PEFT method and its learning rate differ (PEFT methods
train few, freshly initialised tensors and need a larger rate than full fine-tuning). For each
mergeable method the row also records how far the merged plain model's logits are from the
adapted model's on a dev batch (the merge is exact up to float rounding).

Peak memory: on CUDA, torch's peak allocation per method. On CPU the only honest figure is the
peak RSS of a process, which only grows, so by default each method runs in a fresh subprocess
(`--no-isolate` runs them in this one and leaves the CPU column empty).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from nanoft import peft
from nanoft.bench.common import environment, format_table, write_results
from nanoft.errors import ConfigError
from nanoft.train.config import FULL_FINETUNING_LR, default_lr

# Each method's recipe rate, written once on its registry record (nanoft/peft; `nanoft train --help` lists
# them); full fine-tuning: BERT's 5e-5.
DEFAULT_LR = {"full": FULL_FINETUNING_LR, **{m: default_lr(m) for m in peft.names()}}
# The registry's options too (LoRA family: r 8, alpha 16, all linear layers), spelled out in the results file.
DEFAULT_OPTIONS: Dict[str, Dict[str, Any]] = {
    m: {k: list(v) if isinstance(v, tuple) else v for k, v in peft.options_of(m).items()
        if k in ("r", "alpha", "targets", "reduction_factor")} for m in peft.names()}


_RANKED = re.compile(r"^(lora|rslora|dora)-r(\d+)$")


def method_spec(label: str, lrs: Dict[str, float], opts: Dict[str, Dict[str, Any]]) -> Tuple[Optional[str], Dict[str, Any], float]:
    """(peft method or None for full fine-tuning, its options, learning rate) of a bench label such as
    `full`, `lora` or `lora-r16`."""
    ranked = _RANKED.match(label)
    method = ranked.group(1) if ranked else label
    if method != "full" and method not in peft.names():
        raise ConfigError(f"unknown PEFT bench method {label!r}",
                          fix=f"use full, {', '.join(peft.names())}, or lora-rN / rslora-rN / dora-rN")
    options = copy.deepcopy(opts.get(label, opts.get(method, {})))
    if ranked:
        rank = int(ranked.group(2))
        options.update(r=rank, alpha=2 * rank)  # alpha / r fixed at the default 16 / 8
    return (None if method == "full" else method), options, lrs.get(label, lrs[method])


def parse_lrs(text: Optional[str]) -> Optional[Dict[str, float]]:
    """`lora=1e-3,full=5e-5` -> {"lora": 0.001, "full": 5e-05}; a bad item is a ConfigError."""
    if not text:
        return None
    rates: Dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        try:
            rates[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(f"--lr item {item!r} is not METHOD=RATE", fix="e.g. --lr lora=1e-3,full=5e-5")
    return rates


def _merge_error(trainer: Any, examples: int = 64) -> Optional[float]:
    """Max |logits(merged plain copy) - logits(adapted model)| on the first dev examples, in fp32
    (None: full fine-tuning, or a method that does not merge)."""
    from nanoft.data import collate

    model = trainer.model
    data = next(iter(trainer.eval_data.values()), None)
    if data is None or not peft.is_peft_model(model) or not peft.is_mergeable(model):
        return None
    batch = collate(data, list(range(min(examples, len(data)))), trainer.tokenizer.pad_token_id)
    inputs = {k: batch[k].to(trainer.device) for k in ("input_ids", "attention_mask", "token_type_ids")}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        adapted = model(**inputs)
        merged = peft.merged_copy(model)(**inputs)
    model.train(was_training)
    return float((adapted.float() - merged.float()).abs().max())


def run_peft_bench(task: str = "sst2", methods: Sequence[str] = ("full", "lora", "dora", "houlsby", "bitfit", "ia3"),
                   *, data_dir: Optional[str] = None, model: Optional[str] = None, epochs: float = 1.0,
                   max_steps: Optional[int] = None, train_subset: Optional[int] = None, batch_size: int = 32,
                   max_length: int = 128, lr: Optional[Dict[str, float]] = None,
                   options: Optional[Dict[str, Dict[str, Any]]] = None, seed: int = 42,
                   device: Optional[str] = None, precision: str = "auto", isolate: Optional[bool] = None,
                   write: bool = True, out_dir: Optional[Path] = None, name: Optional[str] = None) -> List[Dict[str, Any]]:
    """Fine-tune with each method through `nanoft.train.Trainer`; one result row per method.

    isolate: run each method in a fresh Python process so that its peak RSS is its own (default: on
    CPU, where no per-method allocator statistics exist)."""
    lrs = {**DEFAULT_LR, **(lr or {})}
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    for label in methods:
        method_spec(label, lrs, opts)  # every label checked before hours of training
    on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    isolate = (not on_cuda) if isolate is None else isolate
    run_args = dict(task=task, data_dir=data_dir, model=model, epochs=epochs, max_steps=max_steps,
                    train_subset=train_subset, batch_size=batch_size, max_length=max_length, seed=seed,
                    device=device, precision=precision)
    rows: List[Dict[str, Any]] = []
    for label in methods:
        if isolate:
            rows.append(_run_in_subprocess(label, lrs, opts, run_args))
        else:
            rows.append(run_one_method(label, lrs, opts, **run_args))
            if not on_cuda:
                rows[-1]["peak_memory_MB"] = None  # a shared process's RSS peak is not this method's
    if write:
        meta = {"task": task, "epochs": epochs, "max_steps": max_steps, "train_subset": train_subset,
                "batch_size": batch_size, "max_length": max_length, "seed": seed, "options": opts,
                "peak_memory": "CUDA peak allocation" if on_cuda else
                               ("peak RSS of a fresh process per method" if isolate else "not measured")}
        write_results(name or f"peft_{task}", rows, meta=meta, out_dir=out_dir,
                      notes="Same checkpoint, data, seed and steps for every method; only the method and lr differ.")
    return rows


def run_one_method(label: str, lrs: Dict[str, float], opts: Dict[str, Dict[str, Any]], *, task: str,
                   data_dir: Optional[str], model: Optional[str], epochs: float, max_steps: Optional[int],
                   train_subset: Optional[int], batch_size: int, max_length: int, seed: int,
                   device: Optional[str], precision: str) -> Dict[str, Any]:
    """Train one method in this process; its result row (peak memory: the trainer's figure at the end of
    training, i.e. before the adapter is saved and the merge is checked)."""
    from nanoft.train import TrainConfig, Trainer

    method, options, rate = method_spec(label, lrs, opts)
    with tempfile.TemporaryDirectory(prefix="nanoft-bench-peft-") as tmp:
        config = TrainConfig(task=task, data_dir=data_dir, model=model, epochs=epochs, max_steps=max_steps,
                             train_subset=train_subset, batch_size=batch_size, max_length=max_length,
                             lr=rate, seed=seed, precision=precision, peft=method, peft_options=options,
                             output=str(Path(tmp) / "run"), overwrite=True, quiet=True, save_best=False)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the trainer resets the peak statistics itself
        trainer = Trainer(config, device=device, progress=False)
        results = trainer.fit()
        summary = peft.trainable_summary(trainer.model)
        adapter_mb = None
        if method is not None:
            adapter_dir = peft.save_adapter(trainer.model, Path(tmp) / "adapter")
            adapter_mb = (adapter_dir / peft.WEIGHTS_NAME).stat().st_size / 2**20
        best = results.get("best") or {}
        return {
            "method": label, results["main_metric"]: best.get("score"),
            "trainable": summary["trainable"], "trainable_%": round(summary["percent"], 3),
            "adapter_MB": adapter_mb, "examples_per_s": results["examples_per_s"],
            "peak_memory_MB": results["peak_memory_mb"], "steps": results["steps"], "lr": f"{rate:g}",
            "merge_max_abs_diff": _merge_error(trainer),
        }


def _run_in_subprocess(label: str, lrs: Dict[str, float], opts: Dict[str, Dict[str, Any]],
                       run_args: Dict[str, Any]) -> Dict[str, Any]:
    """run_one_method in a fresh interpreter (same environment, so the same threads); its row back as JSON."""
    with tempfile.TemporaryDirectory(prefix="nanoft-bench-peft-row-") as tmp:
        spec = Path(tmp) / "spec.json"
        row_file = Path(tmp) / "row.json"
        spec.write_text(json.dumps({"label": label, "lrs": lrs, "opts": opts, "run_args": run_args}))
        # -P: `-m` would put the current folder first on sys.path (the repository root, if run from there)
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        done = subprocess.run([sys.executable, *safe_path, "-m", "nanoft.bench.peft", "--one", str(spec), str(row_file)])
        if done.returncode != 0 or not row_file.is_file():
            raise RuntimeError(f"PEFT bench method {label!r} failed in its subprocess (exit {done.returncode}); "
                               "its error is printed above")
        return json.loads(row_file.read_text())


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2", help="built-in task (sst2, cola, rte, ...) [default: sst2]")
    parser.add_argument("--methods", default="full,lora,dora,houlsby,bitfit,ia3",
                        help="comma-separated: full, lora, rslora, dora, houlsby, pfeiffer, bitfit, ia3, lora-rN")
    parser.add_argument("--data-dir", default=None, help="task data folder [default: $NANOFT_DATA_DIR]")
    parser.add_argument("--model", default=None, help="checkpoint folder [default: the installed MiniLM]")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per method [default: 1]")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per method (overrides --epochs)")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="train on a seeded random subset of N examples (same for every method)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step [default: 32]")
    parser.add_argument("--max-length", type=int, default=128, help="max tokens per input [default: 128]")
    parser.add_argument("--lr", default=None,
                        help="learning rates METHOD=LR, comma-separated (e.g. lora=1e-3,full=5e-5); "
                             f"defaults: {', '.join(f'{k}={v:g}' for k, v in DEFAULT_LR.items())}")
    parser.add_argument("--name", default=None, help="results file name in bench/results [default: peft_TASK]")
    parser.add_argument("--device", default=None, help="cpu or cuda [default: cuda when available]")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 [default: auto]")
    parser.add_argument("--no-isolate", action="store_true",
                        help="run every method in this process (on CPU the peak-memory column is then left empty)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; write no results files")
    parser.add_argument("--one", nargs=2, metavar=("SPEC", "ROW"), help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.one:
        spec = json.loads(Path(args.one[0]).read_text())
        row = run_one_method(spec["label"], spec["lrs"], spec["opts"], **spec["run_args"])
        Path(args.one[1]).write_text(json.dumps(row))
        return
    rows = run_peft_bench(args.task, [m.strip() for m in args.methods.split(",") if m.strip()],
                          data_dir=args.data_dir, model=args.model, epochs=args.epochs, max_steps=args.max_steps,
                          train_subset=args.train_subset, batch_size=args.batch_size, max_length=args.max_length,
                          lr=parse_lrs(args.lr), device=args.device, precision=args.precision,
                          isolate=False if args.no_isolate else None, write=not args.no_write, name=args.name)
    env = environment()
    print(f"device: {env.get('gpu') or env.get('cpu')}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
