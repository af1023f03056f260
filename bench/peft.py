"""PEFT methods compared on one task: dev score, trainable parameters, adapter file size, speed, memory.

    .venv/bin/python -m nanoft.bench.peft --task sst2 --methods full,lora,dora,houlsby,bitfit,ia3 [--max-steps 500]

Every method fine-tunes the same checkpoint with the same data, seed, batch size and number of
steps through the real trainer; only the PEFT method and its learning rate differ (PEFT methods
train few, freshly initialised tensors and need a larger rate than full fine-tuning). For each
mergeable method the row also records how far the merged plain model's logits are from the
adapted model's on a dev batch (the merge is exact up to float rounding).
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from nanoft import peft
from nanoft.bench.common import environment, format_table, write_results

# Learning rates commonly used for each method on GLUE-size tasks (full fine-tuning: BERT's 5e-5).
DEFAULT_LR = {"full": 5e-5, "lora": 5e-4, "rslora": 5e-4, "dora": 5e-4, "houlsby": 1e-3, "pfeiffer": 1e-3,
              "bitfit": 1e-3, "ia3": 3e-3}
DEFAULT_OPTIONS: Dict[str, Dict[str, Any]] = {
    "lora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
    "rslora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
    "dora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
    "houlsby": {"reduction_factor": 16}, "pfeiffer": {"reduction_factor": 16}, "bitfit": {}, "ia3": {},
}


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
                   device: Optional[str] = None, precision: str = "auto", write: bool = True,
                   out_dir: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Fine-tune with each method through `nanoft.train.Trainer`; one result row per method."""
    from nanoft.train import TrainConfig, Trainer

    lrs = {**DEFAULT_LR, **(lr or {})}
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nanoft-bench-peft-") as tmp:
        for method in methods:
            if method != "full" and method not in peft.METHODS:
                peft.options_of(method)  # raises the ConfigError naming the valid methods
            config = TrainConfig(task=task, data_dir=data_dir, model=model, epochs=epochs, max_steps=max_steps,
                                 train_subset=train_subset, batch_size=batch_size, max_length=max_length,
                                 lr=lrs[method], seed=seed, precision=precision,
                                 peft=None if method == "full" else method,
                                 peft_options=copy.deepcopy(opts.get(method, {})),
                                 output=str(Path(tmp) / method), overwrite=True, quiet=True, save_best=False)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()  # each method's own peak, not the run's so far
            trainer = Trainer(config, device=device, progress=False)
            results = trainer.fit()
            summary = peft.trainable_summary(trainer.model)
            adapter_mb = None
            if method != "full":
                adapter_dir = peft.save_adapter(trainer.model, Path(tmp) / f"{method}-adapter")
                adapter_mb = (adapter_dir / peft.WEIGHTS_NAME).stat().st_size / 2**20
            best = results.get("best") or {}
            rows.append({
                "method": method, results["main_metric"]: best.get("score"),
                "trainable": summary["trainable"], "trainable_%": round(summary["percent"], 3),
                "adapter_MB": adapter_mb, "examples_per_s": results["examples_per_s"],
                # on CPU the trainer can only report the process's peak RSS, which accumulates across methods
                "peak_memory_MB": results["peak_memory_mb"] if results["device"].startswith("cuda") else None,
                "steps": results["steps"], "lr": f"{lrs[method]:g}",
                "merge_max_abs_diff": _merge_error(trainer),
            })
            del trainer
    if write:
        meta = {"task": task, "epochs": epochs, "max_steps": max_steps, "train_subset": train_subset,
                "batch_size": batch_size, "max_length": max_length, "seed": seed, "options": opts}
        write_results(f"peft_{task}", rows, meta=meta, out_dir=out_dir,
                      notes="Same checkpoint, data, seed and steps for every method; only the method and lr differ.")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--methods", default="full,lora,dora,houlsby,bitfit,ia3")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = run_peft_bench(args.task, [m.strip() for m in args.methods.split(",") if m.strip()],
                          data_dir=args.data_dir, model=args.model, epochs=args.epochs, max_steps=args.max_steps,
                          train_subset=args.train_subset, batch_size=args.batch_size, max_length=args.max_length,
                          device=args.device, precision=args.precision, write=not args.no_write)
    env = environment()
    print(f"device: {env.get('gpu') or env.get('cpu')}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
