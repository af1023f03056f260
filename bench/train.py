"""Training throughput and accuracy: nanoft vs Hugging Face transformers, same recipe, same run.

Each side runs in its own subprocess (so peak memory is its own): MiniLM-L6 on SST-2, batch 32,
AdamW (no decay on biases/LayerNorm), linear schedule with 6% warmup, gradient clipping at 1.0.
transformers gets the usual dynamic padding (random batches padded to their own longest);
nanoft uses its defaults (length-bucketed batches). Speed mode trains a fixed number of steps;
accuracy mode trains `--examples` examples (one epoch = 67,349) and evaluates on dev.

    python -m nanoft.bench.train --precision fp32 --steps 60
    python -m nanoft.bench.train --mode accuracy --examples 16000 --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from nanoft.bench.common import cpu_features, environment, format_table, peak_rss_mb, write_results


def _data_dir(data_dir: Optional[str]) -> Path:
    return Path(data_dir or os.environ.get("NANOFT_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def _read_sst2(path: Path) -> tuple:
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        text, label = line.split("\t")
        texts.append(text)
        labels.append(int(label))
    return texts, np.asarray(labels)


def _peak_memory(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()


def _flops(model_dir: str, tokens: int, pairs: int, sequences: int, seconds: float, device: str,
           precision: str) -> Dict[str, Any]:
    """Achieved training FLOP/s (model FLOPs of the real tokens, nanoft.flops) and its share of the CPU's peak."""
    from nanoft.config import ModelConfig
    from nanoft.flops import utilisation

    config = ModelConfig.from_file(Path(model_dir) / "config.json")
    u = utilisation(config, tokens, pairs, sequences, seconds, torch.device(device), precision)
    return {"train_flops_per_s": u["train_flops_per_s"], "flop_utilisation": u["flop_utilisation"]}


# ------------------------------------------------------------------------------ one side
def run_transformers(args: argparse.Namespace) -> Dict[str, Any]:
    """The reference: BertForSequenceClassification, dynamic padding, the same recipe."""
    import transformers as tf

    from nanoft.weights import default_model_path

    model_dir = args.model or str(default_model_path())
    torch.manual_seed(args.seed)
    data = _data_dir(args.data_dir)
    texts, labels = _read_sst2(data / "sst2" / "train.tsv")
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    tok.model_max_length = 128
    model = tf.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).to(args.device)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(texts))
    steps = args.steps if args.mode == "speed" else math.ceil(args.examples / args.batch_size)
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    sched = tf.get_linear_schedule_with_warmup(opt, int(0.06 * steps), steps)
    use_bf16 = args.precision == "bf16"
    model.train()
    seen = tokens = pairs = 0
    start = time.perf_counter()
    for step in range(steps):
        idx = order[(step * args.batch_size) % len(order):][:args.batch_size]
        batch = tok([texts[i] for i in idx], truncation=True, max_length=128, padding=True, return_tensors="pt")
        batch = {k: v.to(args.device) for k, v in batch.items()}
        y = torch.as_tensor(labels[idx]).to(args.device)
        lengths = batch["attention_mask"].sum(-1)
        tokens, pairs = tokens + int(lengths.sum()), pairs + int((lengths * lengths).sum())
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**batch, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        seen += len(idx)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"side": "transformers", "examples": seen, "train_seconds": seconds, "examples_per_s": seen / seconds,
           "peak_memory_mb": _peak_memory(args.device),
           **_flops(model_dir, tokens, pairs, seen, seconds, args.device, args.precision)}
    if args.mode == "accuracy":
        dev_texts, dev_labels = _read_sst2(data / "sst2" / "dev.tsv")
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(dev_texts), 128):
                batch = tok(dev_texts[i:i + 128], truncation=True, max_length=128, padding=True, return_tensors="pt")
                pred = model(**{k: v.to(args.device) for k, v in batch.items()}).logits.argmax(-1).cpu().numpy()
                correct += int((pred == dev_labels[i:i + 128]).sum())
        out["dev_accuracy"] = correct / len(dev_texts)
    return out


def run_nanoft(args: argparse.Namespace) -> Dict[str, Any]:
    import tempfile

    from nanoft.train import Trainer, TrainConfig

    steps = args.steps if args.mode == "speed" else math.ceil(args.examples / args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(task="sst2", data_dir=str(_data_dir(args.data_dir)), model=args.model,
                             batch_size=args.batch_size, max_steps=steps, lr=args.lr, warmup=0.06,
                             precision=args.precision, seed=args.seed, output=tmp, quiet=True, save_best=False,
                             compile=args.compile, sampler=args.sampler,
                             unpad={"auto": None, "on": True, "off": False}[args.unpad])
        trainer = Trainer(config, device=args.device)
        if args.mode == "speed":
            trainer.eval_data = {}  # speed mode: no evaluation
        results = trainer.fit()
    label = (args.sampler + ("" if args.unpad == "auto" else f", unpad {args.unpad}")
             + (", compile" if args.compile else ""))
    out = {"side": f"nanoft ({label})", "examples": trainer.progress.examples_seen,
           "train_seconds": results["train_seconds"], "examples_per_s": results["examples_per_s"],
           "peak_memory_mb": _peak_memory(args.device), "train_flops_per_s": results["train_flops_per_s"],
           "flop_utilisation": results["flop_utilisation"]}
    if args.mode == "accuracy":
        out["dev_accuracy"] = results["best"]["metrics"]["dev"]["accuracy"] if results["best"] else None
    return out


# ------------------------------------------------------------------------------ driver
def _side(args: argparse.Namespace, side: str, **overrides: Any) -> Dict[str, Any]:
    # -P: the working directory (the repository root has a `kernels` folder) stays off sys.path
    cmd = [sys.executable, "-P", "-m", "nanoft.bench.train", "--side", side]
    values = {**vars(args), **overrides}
    for key in ("mode", "precision", "steps", "examples", "batch_size", "lr", "seed", "device", "sampler", "unpad"):
        cmd += [f"--{key.replace('_', '-')}", str(values[key])]
    for key in ("model", "data_dir"):
        if values.get(key):
            cmd += [f"--{key.replace('_', '-')}", str(values[key])]
    if values.get("compile"):
        cmd.append("--compile")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_train_bench(precisions: Sequence[str] = ("fp32",), args: Optional[argparse.Namespace] = None,
                    write: bool = True) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for precision in precisions:
        ref = _side(args, "transformers", precision=precision)
        ref["precision"] = precision
        rows.append(ref)
        samplers = ["bucket", "random"] if args.mode == "speed" else ["bucket"]
        for sampler in samplers:
            ours = _side(args, "nanoft", precision=precision, sampler=sampler)
            ours["precision"] = precision
            ours["speedup_vs_transformers"] = ours["examples_per_s"] / ref["examples_per_s"]
            rows.append(ours)
    if write:
        feats = cpu_features()
        meta = {"mode": args.mode, "device": args.device, "batch_size": args.batch_size, "lr": args.lr,
                "steps" if args.mode == "speed" else "examples": args.steps if args.mode == "speed" else args.examples,
                "cpu_features": ", ".join(k for k, v in feats.items() if v) or "none"}
        name = f"train_{args.mode}_{args.device}"
        columns = ["side", "precision", "examples", "train_seconds", "examples_per_s", "speedup_vs_transformers",
                   "peak_memory_mb", "train_flops_per_s", "flop_utilisation"] + (["dev_accuracy"] if args.mode == "accuracy" else [])
        write_results(name, rows, meta=meta, columns=columns, notes=(
            "Same recipe on both sides (AdamW, linear schedule with 6% warmup, clipping 1.0, batch 32, max length 128). "
            "transformers pads random batches to their longest example; nanoft's default sampler buckets by length "
            "(the 'random' row shows nanoft without bucketing). Peak memory is each subprocess's own "
            "(RSS on CPU, max allocated on CUDA). FLOP/s: model training FLOPs of the real tokens per second "
            "(docs/flops.md); utilisation: that over this CPU's matmul peak in the same precision, measured "
            "in each subprocess."))
    return rows


def cli(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nanoft bench train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=["speed", "accuracy"], default="speed", help="throughput, or dev accuracy")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    p.add_argument("--steps", type=int, default=60, help="speed mode: optimizer steps per side")
    p.add_argument("--examples", type=int, default=16000, help="accuracy mode: training examples per side")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sampler", default="bucket", help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help="torch.compile nanoft's model")
    p.add_argument("--unpad", choices=["auto", "on", "off"], default="auto",
                   help="nanoft's unpadded encoder (auto: the model's default for the device)")
    p.add_argument("--model", default=None, help="model directory [default: installed MiniLM]")
    p.add_argument("--data-dir", default=None, help="data folder [default: $NANOFT_DATA_DIR]")
    p.add_argument("--side", choices=["transformers", "nanoft"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        torch.manual_seed(args.seed)
        out = run_transformers(args) if args.side == "transformers" else run_nanoft(args)
        print(json.dumps(out))
        return
    rows = run_train_bench([s.strip() for s in args.precision.split(",")], args)
    print(format_table(rows, ["side", "precision", "examples", "train_seconds", "examples_per_s",
                              "speedup_vs_transformers", "peak_memory_mb", "train_flops_per_s",
                              "flop_utilisation"]
                       + (["dev_accuracy"] if args.mode == "accuracy" else [])))
    print(json.dumps({"environment": environment()["cpu_features"]}))


if __name__ == "__main__":
    cli()
