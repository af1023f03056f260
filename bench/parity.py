"""Accuracy and speed parity with transformers on every shared task, several seeds per side, in one run.

    nanoft bench parity --preset small                      # 5 tasks x 3 seeds per side (CPU-sized)
    nanoft bench parity --preset small --tasks rte,cola --seeds 5
    nanoft bench parity --preset small --sides nanoft --nanoft-sampler random --merge   # beside the same reference

For each task both sides fine-tune the same checkpoint (default: the installed MiniLM) with the same
recipe: the same training examples (one seeded subset, shared by every seed and side) and the same
evaluation examples in the same order, AdamW (fused, the Trainer default of transformers) with the
same weight-decay groups, a linear schedule with the same warmup, gradient clipping, epochs and batch
size. nanoft is its `Trainer` (length-bucketed batches by default; `--nanoft-sampler random` adds
plain shuffled batches); transformers is `AutoModelForSequenceClassification` trained as its Trainer
does it: shuffled batches padded to their own longest (dynamic padding). Both sides tokenize once, up
front, untimed; both time the training steps only (data collation included).

Per task the table gives each side's metric mean ± std over seeds, the difference (nanoft - transformers)
with its standard error and Welch's t, examples/s per side and their ratio, peak memory per side and
the FLOP utilisation of each side (nanoft.flops). Every side/seed runs in a fresh subprocess so its
peak memory (RSS on CPU) is its own; `--no-isolate` runs them in this process (tests).

Each run also reports what the recipe checks compare: a hash of the token ids it trained on (as a
multiset: the same examples, tokenized and truncated the same way) and of the evaluation examples in
scoring order with their labels, the parameter counts with and without weight decay, the classifier's
initial weight std, and the dropout rates. `checks` in the JSON says where the sides agree.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nanoft.bench.common import RESULTS_DIR, compare, environment, format_table, mean_std, write_results
from nanoft.errors import ConfigError, NanoftError
from nanoft.io import atomic_write_text
from nanoft.tables import format_rows
from nanoft.tasks import resolve_data_dir

SIDES = ("nanoft", "transformers")


@dataclass(frozen=True)
class TaskSpec:
    """How much of a task a preset uses: training examples (a seeded subset; None: all), evaluation examples
    (a seeded subset of `eval_split`, kept in file order; None: all) and the maximum length."""
    train: Optional[int]
    eval: Optional[int]
    max_length: int = 128
    eval_split: str = "dev"
    epochs: Optional[float] = None  # None: the preset's
    lr: Optional[float] = None  # None: the preset's


@dataclass(frozen=True)
class Preset:
    tasks: Dict[str, TaskSpec]
    seeds: int = 3
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 5e-5
    description: str = ""


PRESETS: Dict[str, Preset] = {
    # CI-sized: the test writes a tiny model and tiny sst2/cola folders
    "tiny": Preset({"sst2": TaskSpec(48, 24, 32), "cola": TaskSpec(48, 24, 32)}, seeds=2, batch_size=8, lr=1e-3,
                   description="48 train / 24 eval examples per task, max length 32, batch 8, 2 seeds"),
    # sized for a 2-core CPU shared with other jobs: 5 tasks x 3 seeds x 2 sides in about an hour. Measured first:
    # 2,000 SST-2 examples took 10.5 minutes for one seed of both sides under that load, and at lr 5e-5 a few hundred
    # examples (13 steps) leave MiniLM at the majority class on both sides, so the subsets are small and the rate higher
    "small": Preset({"sst2": TaskSpec(640, 400), "cola": TaskSpec(640, 400), "agnews": TaskSpec(256, 300),
                     "rte": TaskSpec(160, None), "imdb": TaskSpec(64, 64, 512, "test")}, lr=2e-4,
                    description="seeded training subsets of 640 (SST-2, CoLA), 256 (AG News), 160 (RTE) and 64 (IMDB, "
                                "max length 512) examples, 1 epoch, batch 32, lr 2e-4; evaluation on seeded subsets of "
                                "400 (SST-2 dev, CoLA dev), 300 (AG News dev), the full RTE dev (277) and 64 IMDB test "
                                "reviews"),
    # the recipe (AdamW 5e-5, batch 32, 1 epoch) on one task at a size where MiniLM learns (63 steps)
    "sst2-2k": Preset({"sst2": TaskSpec(2000, None)},
                      description="SST-2: a seeded 2,000-example training subset, 1 epoch, batch 32, lr 5e-5; the full "
                                  "dev set (872)"),
    # sized for a quiet 2-core CPU: 5 tasks x 3 seeds x 2 sides in about an hour, every task large enough to learn.
    # The recipe (1 epoch at lr 5e-5, batch 32) except where MiniLM stays at the majority class with it:
    # CoLA (MCC 0.00 on both sides, 3 seeds each, with the full training set) gets 2 epochs at 1e-4, IMDB 1e-4
    # (30 steps); RTE (2,490 pairs) 2 epochs
    "medium": Preset({"sst2": TaskSpec(8000, None), "cola": TaskSpec(None, None, epochs=2.0, lr=1e-4),
                      "agnews": TaskSpec(4000, None), "rte": TaskSpec(None, None, epochs=2.0),
                      "imdb": TaskSpec(960, None, 512, "test", lr=1e-4)},
                     description="seeded training subsets of 8,000 (SST-2), 4,000 (AG News) and 960 (IMDB, max length "
                                 "512) examples, the full CoLA and RTE training sets; batch 32, 1 epoch at lr 5e-5 "
                                 "except CoLA (2 epochs, lr 1e-4), RTE (2 epochs) and IMDB (lr 1e-4); evaluation on "
                                 "the full SST-2, CoLA and RTE dev sets, the AG News dev split (1,000: a seeded 10% of "
                                 "train.tsv, never trained on) and the 400 IMDB test reviews"),
    # the full training sets, 3 epochs: a GPU-sized run
    "full": Preset({"sst2": TaskSpec(None, None), "cola": TaskSpec(None, None), "rte": TaskSpec(None, None),
                    "agnews": TaskSpec(None, None), "imdb": TaskSpec(None, None, 512, "test")}, epochs=3.0,
                   description="full training sets and dev sets, 3 epochs, batch 32, lr 5e-5"),
}


@dataclass
class RunSpec:
    """One side, one seed, one task: everything a worker needs (it travels as JSON to a subprocess)."""
    side: str
    task: str
    seed: int
    train: Optional[int]
    eval: Optional[int]
    max_length: int
    eval_split: str
    epochs: float
    batch_size: int
    lr: float
    weight_decay: float = 0.01
    warmup: float = 0.06
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    sampler: str = "bucket"  # nanoft's only
    model: Optional[str] = None
    data_dir: Optional[str] = None
    data_seed: int = 0  # the training subset and eval subset: the same for every seed and side
    eval_batch_size: int = 128
    force_predictions: bool = False  # skip training; score a fixed function of the input ids (tests)
    # transformers' schedule: "nanoft" gives it nanoft's per-step factors (the same recipe step for step);
    # "transformers" is stock get_linear_schedule_with_warmup, whose first step runs at lr 0 (see REFERENCE_SCHEDULE)
    reference_schedule: str = "nanoft"


# ------------------------------------------------------------------------------ shared by both sides
def load_examples(spec: RunSpec) -> Tuple[Any, Any, Any]:
    """(task, training examples, evaluation examples): seeded subsets by `data_seed`, in file order."""
    from nanoft.tasks import get_task

    task = get_task(spec.task)

    def subset(examples: Any, n: Optional[int], salt: int) -> Any:
        if n is None or n >= len(examples):
            return examples
        order = np.random.default_rng([spec.data_seed, salt]).permutation(len(examples))[:n]
        return examples.select(np.sort(order))

    train = subset(task.load(spec.data_dir, "train"), spec.train, 0)
    evaluation = subset(task.load(spec.data_dir, spec.eval_split), spec.eval, 1)
    return task, train, evaluation


def multiset_hash(sequences: Sequence[Sequence[int]]) -> str:
    """A hash of token-id sequences that ignores their order (which examples, tokenized how)."""
    h = hashlib.sha1()
    for seq in sorted(tuple(int(t) for t in s) for s in sequences):
        h.update(np.asarray(seq, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:16]


def ordered_hash(sequences: Sequence[Sequence[int]], labels: Sequence[int]) -> str:
    """A hash of (token ids, label) pairs in the given order (the evaluation as it is scored)."""
    h = hashlib.sha1()
    for seq, label in zip(sequences, labels):
        h.update(np.asarray(seq, dtype=np.int64).tobytes() + f"|{int(label)}|".encode())
    return h.hexdigest()[:16]


class ForcedLogits(torch.nn.Module):
    """A stand-in model whose prediction is a fixed function of an example's real token ids:
    class (Σ ids) mod num_labels. Both sides score it on their own eval batches (their padding, order and
    batching); equal scores mean their evaluation and metric code agree on identical predictions."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # evaluation code asks for a parameter's device

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **_: Any) -> torch.Tensor:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        classes = (input_ids * mask).sum(-1) % self.num_labels
        return torch.nn.functional.one_hot(classes, self.num_labels).float()


def forced_prediction(ids: Sequence[int], num_labels: int) -> int:
    """ForcedLogits' class for one example's real token ids (for checking it by hand)."""
    return int(sum(int(t) for t in ids) % num_labels)


def _flops(model_dir: Path, tokens: int, pairs: int, sequences: int, seconds: float, precision: str,
           num_labels: int) -> Dict[str, Any]:
    from nanoft.config import ModelConfig
    from nanoft.flops import utilisation

    config = ModelConfig.from_file(model_dir / "config.json")
    return utilisation(config, tokens, pairs, sequences, seconds, torch.device("cpu"), precision, num_labels)


def _model_dir(spec: RunSpec) -> Path:
    from nanoft.weights import default_model_path

    return Path(spec.model) if spec.model else Path(default_model_path())


# ------------------------------------------------------------------------------ nanoft
def run_nanoft(spec: RunSpec) -> Dict[str, Any]:
    """nanoft's Trainer on the spec's examples (an objective that brings its own data)."""
    from nanoft.data import encode
    from nanoft.train import TrainConfig, Trainer
    from nanoft.train.build import make_sampler
    from nanoft.train.evaluate import predict_logits, score
    from nanoft.train.objective import SequenceClassification
    from nanoft.weights.tokenizer import Truncation

    task, train, evaluation = load_examples(spec)

    class FixedData(SequenceClassification):
        """The task's objective on the bench's own subsets; keeps the last evaluation's logits."""

        def load_data(self, config: Any, tokenizer: Any) -> Tuple[Any, Dict[str, Any]]:
            trunc = Truncation.from_config(config)
            return (encode(train, tokenizer, config.max_length, truncation=trunc),
                    {"eval": encode(evaluation, tokenizer, config.max_length, truncation=trunc)})

        def evaluate(self, model: Any, data: Any, pad_token_id: int, batch_size: int, device: Any,
                     precision: str, dist: Any) -> Dict[str, float]:
            self.logits = predict_logits(model, data, pad_token_id, batch_size, device, precision, dist)
            return score(self.task, self.logits, data.labels)

    objective = FixedData(task)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(task=spec.task, data_dir=spec.data_dir, model=spec.model, max_length=spec.max_length,
                             epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
                             weight_decay=spec.weight_decay, warmup=spec.warmup, max_grad_norm=spec.max_grad_norm,
                             precision=spec.precision, sampler=spec.sampler, seed=spec.seed,
                             eval_batch_size=spec.eval_batch_size, output=tmp, quiet=True, save_best=False,
                             log_every=10**9)
        trainer = Trainer(config, objective=objective, device="cpu")
        data = trainer.eval_data["eval"]
        out: Dict[str, Any] = _common_checks_nanoft(trainer)
        if spec.force_predictions:
            metrics = trainer.evaluate("eval", model=ForcedLogits(task.num_labels))
            results: Dict[str, Any] = {}
        else:
            # what the trainer will see: a twin of its sampler (same seed) hands out the same batches
            twin = make_sampler(trainer.config, trainer.train_data.lengths, 1)
            trained: List[List[int]] = []
            for epoch in range(math.ceil(spec.epochs)):
                twin.set_epoch(epoch)
                trained += [list(trainer.train_data.ids(i)) for b in twin for i in b]
            lr_sum = sum(trainer.scheduler.factor(k) for k in range(trainer.total_steps)) * spec.lr
            results = trainer.fit()
            metrics = score(task, objective.logits, data.labels)
            out["lr_sum"] = lr_sum
            out["train_hash"] = multiset_hash(trained)
    out.update({"eval_hash": ordered_hash([data.ids(i) for i in range(len(data))], data.labels),
                "metric": metrics[task.main_metric], "metrics": metrics})
    if results:
        out.update({k: results[k] for k in ("train_seconds", "examples_per_s", "tokens_per_s", "peak_memory_mb",
                                            "train_flops_per_s", "peak_flops_per_s", "flop_utilisation", "steps")})
        out["examples"] = trainer.progress.examples_seen
    return out


def _common_checks_nanoft(trainer: Any) -> Dict[str, Any]:
    decay = sum(p.numel() for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"])
    no_decay = sum(p.numel() for g in trainer.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"])
    cfg = trainer.model.config
    return {"decay_params": decay, "no_decay_params": no_decay,
            "classifier_init_std": float(trainer.model.head.out.weight.detach().std()),
            "dropout": {"hidden": cfg.hidden_dropout, "attention": cfg.attention_dropout,
                        "classifier": cfg.classifier_dropout if cfg.classifier_dropout is not None
                        else cfg.hidden_dropout}}


# ------------------------------------------------------------------------------ transformers
def _pad(rows: List[Dict[str, List[int]]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Dynamic padding: right-pad the batch to its own longest example (DataCollatorWithPadding's output)."""
    longest = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": torch.full((len(rows), longest), pad_id, dtype=torch.long),
           "token_type_ids": torch.zeros((len(rows), longest), dtype=torch.long),
           "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long)}
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        out["input_ids"][i, :n] = torch.as_tensor(r["input_ids"])
        out["attention_mask"][i, :n] = 1
        if "token_type_ids" in r:
            out["token_type_ids"][i, :n] = torch.as_tensor(r["token_type_ids"])
    return out


def decay_parameter_names(model: torch.nn.Module) -> List[str]:
    """The names transformers' Trainer decays: everything but biases and LayerNorm parameters
    (`Trainer.get_decay_parameter_names`, written out here so the rule is visible)."""
    names = []
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, torch.nn.LayerNorm) or "bias" in name or "layernorm" in full.lower():
                continue
            names.append(full)
    return names


def run_transformers(spec: RunSpec) -> Dict[str, Any]:
    """The reference: AutoModelForSequenceClassification, shuffled batches with dynamic padding, the same recipe."""
    import transformers as tf

    from nanoft.train.evaluate import score
    from nanoft.train.runtime import peak_memory_mb, reset_peak_memory

    reset_peak_memory()
    torch.manual_seed(spec.seed)
    task, train, evaluation = load_examples(spec)
    model_dir = _model_dir(spec)
    tok = tf.AutoTokenizer.from_pretrained(str(model_dir))

    def tokenize(examples: Any) -> List[Dict[str, List[int]]]:
        enc = tok(examples.texts, examples.text_pairs, truncation=True, max_length=spec.max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(examples))]

    train_rows, eval_rows = tokenize(train), tokenize(evaluation)
    model = tf.AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=task.num_labels)
    decay_names = set(decay_parameter_names(model))
    params = dict(model.named_parameters())
    groups = [{"params": [p for n, p in params.items() if n in decay_names], "weight_decay": spec.weight_decay},
              {"params": [p for n, p in params.items() if n not in decay_names], "weight_decay": 0.0}]
    cfg = model.config
    out: Dict[str, Any] = {
        "decay_params": sum(p.numel() for p in groups[0]["params"]),
        "no_decay_params": sum(p.numel() for p in groups[1]["params"]),
        "classifier_init_std": float(model.classifier.weight.detach().std()),
        "dropout": {"hidden": cfg.hidden_dropout_prob, "attention": cfg.attention_probs_dropout_prob,
                    "classifier": cfg.classifier_dropout if cfg.classifier_dropout is not None
                    else cfg.hidden_dropout_prob}}
    pad_id = tok.pad_token_id
    labels = np.asarray(train.labels)
    results: Dict[str, Any] = {}
    if not spec.force_predictions:
        optimizer = torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
        steps_per_epoch = math.ceil(len(train_rows) / spec.batch_size)
        total = max(1, math.ceil(spec.epochs * steps_per_epoch))
        warmup = int(spec.warmup) if spec.warmup >= 1 else math.ceil(spec.warmup * total)
        if spec.reference_schedule == "transformers":
            scheduler = tf.get_linear_schedule_with_warmup(optimizer, warmup, total)
        else:
            from nanoft.train.schedules import ScheduleConfig, factor_fn

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor_fn(ScheduleConfig(
                name="linear", total_steps=total, warmup_steps=warmup)))
        lr_sum = 0.0
        use_bf16 = spec.precision == "bf16"
        model.train()
        seen = tokens = pairs = step = 0
        trained: List[List[int]] = []
        seconds = 0.0
        while step < total:
            order = np.random.default_rng([spec.seed, step // steps_per_epoch]).permutation(len(train_rows))
            for start in range(0, len(order), spec.batch_size):
                if step >= total:
                    break
                t0 = time.perf_counter()
                lr_sum += optimizer.param_groups[0]["lr"]
                idx = order[start:start + spec.batch_size]
                batch = _pad([train_rows[i] for i in idx], pad_id)
                y = torch.as_tensor(labels[idx])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    loss = model(**batch, labels=y).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                seconds += time.perf_counter() - t0
                lengths = batch["attention_mask"].sum(-1)
                seen, tokens, pairs = seen + len(idx), tokens + int(lengths.sum()), pairs + int((lengths ** 2).sum())
                trained += [train_rows[i]["input_ids"] for i in idx]
                step += 1
        results = {"train_seconds": seconds, "examples_per_s": seen / max(seconds, 1e-9),
                   "tokens_per_s": tokens / max(seconds, 1e-9), "steps": step, "examples": seen,
                   "peak_memory_mb": peak_memory_mb(torch.device("cpu")),
                   **{k: v for k, v in _flops(model_dir, tokens, pairs, seen, seconds, spec.precision,
                                              task.num_labels).items() if k != "train_flops"}}
        out["train_hash"] = multiset_hash(trained)
        out["lr_sum"] = lr_sum
    # evaluation: the examples in their order, batches padded to their own longest
    evaluator = ForcedLogits(task.num_labels) if spec.force_predictions else model
    evaluator.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(eval_rows), spec.eval_batch_size):
            batch = _pad(eval_rows[start:start + spec.eval_batch_size], pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.precision == "bf16"):
                output = evaluator(**batch)
            logits.append(getattr(output, "logits", output).float())
    metrics = score(task, torch.cat(logits), np.asarray(evaluation.labels))
    out.update({"eval_hash": ordered_hash([r["input_ids"] for r in eval_rows], evaluation.labels),
                "metric": metrics[task.main_metric], "metrics": metrics, **results})
    return out


# ------------------------------------------------------------------------------ driver
REFERENCE_SCHEDULE = """Warmup: nanoft's linear warmup gives step k (from 0) the factor (k+1)/w; transformers'
get_linear_schedule_with_warmup gives k/w, so its first optimizer step runs at lr 0 and the whole warmup lags one
step. After warmup both decay alike to the same final step. Over a run nanoft's schedule holds exactly one peak-lr
step more (over T steps the factors sum to T/2 + 1 against T/2): 0.1% more lr at 2,000 steps, but 10-100% more in
the small preset's runs of 20 down to 2 steps. By default the bench therefore gives transformers nanoft's factors (a LambdaLR), so
both sides take the same lr at every step (`same_lr_schedule`); `--reference-schedule transformers` runs it stock."""


NOTES = """How to read it: metrics in points (x100; CoLA: Matthews correlation), mean ± std over seeds per side;
diff = nanoft - transformers with its standard error sqrt(s1²/n1 + s2²/n2) and Welch's t = diff / se. Accuracy
target: nanoft's mean within 0.5 points of transformers' or within one standard error (a nanoft mean above counts as
within). Speed target: examples/s ratio ≥ 2x on every task, ≥ 3x on SST-2 (fp32). ex/s, memory and FLOP/s are means
over seeds; each side/seed ran in its own subprocess, sides interleaved per seed, on a CPU shared with other jobs, so
absolute speeds move with the load and only the ratios within this run compare. FLOP/s: model training FLOPs of the
real tokens per second (docs/flops.md); util: that over this process's measured fp32 matmul peak.

Recipe checks, one by one (the table below says whether every run of a task agreed):
- Training examples and truncation: `same_train_tokens` compares a hash of the multiset of token-id sequences each
  run trained on (the same examples, tokenized and truncated alike; IMDB: head truncation at 512 on both sides).
- Evaluation: `same_eval_examples_and_order` hashes (token ids, label) in scoring order; both sides score with
  nanoft.metrics, and tests/test_parity.py checks that identical forced predictions get identical scores on both
  sides' evaluation paths (padding, batching and order differ), equal to a hand computation.
- Weight decay: `same_weight_decay_split` compares the parameter counts with and without decay. nanoft decays every
  parameter with ≥ 2 dims whose name has no "norm"; transformers' Trainer every parameter but biases and LayerNorm:
  both give 22,682,880 decayed and 31,106 undecayed parameters on MiniLM.
- Head initialisation: both build the pooler from the checkpoint and draw the classifier from N(0, 0.02) with zero
  bias; `classifier_init_std` is the measured std (same seed: the same draw on both sides).
- Dropout: 0.1 on embeddings, attention probabilities, each sublayer output and before the classifier on both
  (`same_dropout` compares the rates; the placement is the model parity tests' subject).
- Loss reduction: both take the batch-mean cross-entropy and step once per batch (no accumulation), so a short last
  batch weighs as much as a full one on both sides.
- Optimizer: torch AdamW (fused, betas 0.9/0.999, eps 1e-8) on both; clipping at 1.0 over all parameters.
- Schedule: `same_lr_schedule` compares the sum of the per-step learning rates (see the warmup note).
- Batch order: transformers shuffles; nanoft buckets by length (shuffle, sort chunks of 100 batches by length, batch,
  shuffle the batches). A training subset smaller than one chunk (3,200 examples at batch 32, as in the small
  preset) is sorted whole, so every batch holds examples of one length. `--nanoft-sampler random` adds nanoft with
  shuffled batches (the recipe transformers uses) to measure what bucketing costs or gains.
"""


def run_one(spec: RunSpec, isolate: bool = True) -> Dict[str, Any]:
    """One side/seed: in a fresh subprocess (its own peak memory) or in this process."""
    if not isolate:
        return (run_nanoft if spec.side == "nanoft" else run_transformers)(spec)
    # -P: the working directory stays off sys.path (the repository root holds a `kernels` folder that
    # transformers would import as a package; see DESIGN.md)
    cmd = [sys.executable, "-P", "-m", "nanoft.bench.parity", "--worker", json.dumps(dataclasses.asdict(spec))]
    result = subprocess.run(cmd, capture_output=True, text=True)
    last = (result.stdout.strip().splitlines() or ["{}"])[-1]
    if result.returncode == 2 and last.startswith('{"user_error"'):  # the worker's NanoftError, one line
        raise NanoftError(json.loads(last)["user_error"])
    if result.returncode != 0:
        raise RuntimeError(f"{spec.side} {spec.task} seed {spec.seed} failed:\n{result.stderr[-3000:]}")
    return json.loads(last)


def summarise(task: str, precision: str, runs: Sequence[Dict[str, Any]], variant: str = "bucket") -> Dict[str, Any]:
    """One table row: both sides' seeds of a task."""
    ours = [r for r in runs if r["side"] == "nanoft" and r["sampler"] == variant]
    ref = [r for r in runs if r["side"] == "transformers"]
    scale = 100.0  # metrics in points
    row: Dict[str, Any] = {"task": task, "precision": precision, "nanoft_sampler": variant,
                           "metric": ours[0]["metric_name"] if ours else None, "seeds": f"{len(ours)}/{len(ref)}"}
    both = bool(ours) and bool(ref)  # one side only (--sides nanoft, no earlier run to merge): no comparison
    m1, s1 = mean_std([r["metric"] * scale for r in ours]) if ours else (None, None)
    m2, s2 = mean_std([r["metric"] * scale for r in ref]) if ref else (None, None)
    c = (compare([r["metric"] * scale for r in ours], [r["metric"] * scale for r in ref]) if both
         else {"diff": None, "se": None, "welch_t": None})
    shown = lambda m, s: "-" if m is None else f"{m:.2f} ± {s:.2f}"
    row.update({"nanoft": shown(m1, s1), "transformers": shown(m2, s2),
                "diff": None if c["diff"] is None else round(c["diff"], 2),
                "se": None if c["se"] is None else round(c["se"], 2),
                "welch_t": None if c["welch_t"] is None else round(c["welch_t"], 2)})
    mean = lambda rs, k: float(np.mean([r[k] for r in rs])) if rs and all(r.get(k) is not None for r in rs) else None
    e1, e2 = mean(ours, "examples_per_s"), mean(ref, "examples_per_s")
    u1, u2 = mean(ours, "flop_utilisation"), mean(ref, "flop_utilisation")
    row.update({"nanoft_ex_s": e1, "transformers_ex_s": e2, "speedup": e1 / e2 if e1 and e2 else None,
                "nanoft_mem_mb": mean(ours, "peak_memory_mb"), "transformers_mem_mb": mean(ref, "peak_memory_mb"),
                "nanoft_gflop_s": (mean(ours, "train_flops_per_s") or 0) / 1e9,
                "transformers_gflop_s": (mean(ref, "train_flops_per_s") or 0) / 1e9,
                "nanoft_util_pct": None if u1 is None else 100 * u1,
                "transformers_util_pct": None if u2 is None else 100 * u2,
                "metric_mean_nanoft": m1, "metric_std_nanoft": s1, "metric_mean_transformers": m2,
                "metric_std_transformers": s2})
    # targets: within 0.5 points or one standard error (a nanoft mean above counts as within)
    row["accuracy_target"] = None if not both else "met" if c["diff"] >= -0.5 or c["diff"] >= -c["se"] else "missed"
    need = 3.0 if task == "sst2" else 2.0
    row["speed_target"] = None if row["speedup"] is None else ("met" if row["speedup"] >= need else "missed") + f" (≥{need:g}x)"
    return row


def checks(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Where the two sides' recipes agree, from what every run reported."""
    def same(key: str, rs: Sequence[Dict[str, Any]]) -> bool:
        return len({json.dumps(r.get(key), sort_keys=True) for r in rs}) == 1

    out: Dict[str, Any] = {}
    for task in sorted({r["task"] for r in runs}):
        rs = [r for r in runs if r["task"] == task]
        out[task] = {"same_train_tokens": same("train_hash", rs), "same_eval_examples_and_order": same("eval_hash", rs),
                     "same_weight_decay_split": same("decay_params", rs) and same("no_decay_params", rs),
                     "same_dropout": same("dropout", rs),
                     "same_lr_schedule": len({round(r["lr_sum"], 12) for r in rs if "lr_sum" in r}) <= 1,
                     "classifier_init_std": {side: round(float(np.mean([r["classifier_init_std"] for r in rs
                                                                         if r["side"] == side])), 4)
                                             for side in SIDES if any(r["side"] == side for r in rs)}}
    return out


COLUMNS = ["task", "precision", "nanoft_sampler", "metric", "seeds", "nanoft", "transformers", "diff", "se",
           "welch_t", "nanoft_ex_s", "transformers_ex_s", "speedup", "nanoft_mem_mb", "transformers_mem_mb",
           "nanoft_gflop_s", "transformers_gflop_s", "nanoft_util_pct", "transformers_util_pct",
           "accuracy_target", "speed_target"]


def summary_rows(runs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A row per (task, precision, nanoft sampler) present in `runs`, in the order the runs appear."""
    keys: List[Tuple[str, str, str]] = []
    for r in runs:
        key = (r["task"], r["precision"], r["sampler"])
        if r["side"] == "nanoft" and key not in keys:
            keys.append(key)
    return [summarise(t, p, [r for r in runs if r["task"] == t and r["precision"] == p], s) for t, p, s in keys]


def run_key(run: Dict[str, Any]) -> Tuple[Any, ...]:
    """What identifies a run across invocations: task, precision, side, nanoft sampler, seed."""
    return run["task"], run["precision"], run["side"], run["sampler"] if run["side"] == "nanoft" else "-", run["seed"]


def run_parity(preset: Preset, *, tasks: Optional[Sequence[str]] = None, seeds: Optional[int] = None,
               precisions: Sequence[str] = ("fp32",), samplers: Sequence[str] = ("bucket",),
               model: Optional[str] = None, data_dir: Optional[str] = None, isolate: bool = True,
               reference_schedule: str = "nanoft", sides: Sequence[str] = SIDES,
               previous: Sequence[Dict[str, Any]] = (), name: Optional[str] = "parity", out_dir: Optional[Path] = None, notes: str = "",
               log: Any = None) -> Dict[str, Any]:
    """Run every (task, precision, side, seed); write the results after each task (a partial file survives a
    kill). `sides`: run only these; `previous`: runs of an earlier invocation to summarise together with these
    (e.g. nanoft with another sampler beside an earlier run's transformers seeds).
    Returns {"rows": summary rows, "runs": per-run records, "checks": ...}."""
    tasks = list(tasks or preset.tasks)
    for t in tasks:
        if t not in preset.tasks:
            raise ConfigError(f"task {t!r} is not in this preset", fix=f"use some of {', '.join(preset.tasks)}")
    n_seeds = seeds or preset.seeds
    runs: List[Dict[str, Any]] = list(previous)
    out: Dict[str, Any] = {}
    for task in tasks:
        ts = preset.tasks[task]
        for precision in precisions:
            variants = ([("transformers", "-")] if "transformers" in sides else []) + (
                [("nanoft", s) for s in samplers] if "nanoft" in sides else [])
            for seed in range(n_seeds):
                for side, sampler in variants:  # sides interleaved per seed: load drifts hit both alike
                    spec = RunSpec(side=side, task=task, seed=seed, train=ts.train, eval=ts.eval,
                                   max_length=ts.max_length, eval_split=ts.eval_split,
                                   epochs=ts.epochs or preset.epochs,
                                   batch_size=preset.batch_size, lr=ts.lr or preset.lr, precision=precision,
                                   sampler=sampler if side == "nanoft" else "bucket", model=model, data_dir=data_dir,
                                   reference_schedule=reference_schedule)
                    start = time.perf_counter()
                    record = run_one(spec, isolate)
                    from nanoft.tasks import get_task

                    record.update({"side": side, "task": task, "seed": seed, "precision": precision,
                                   "sampler": sampler, "metric_name": get_task(task).main_metric,
                                   "epochs": spec.epochs, "lr": spec.lr,
                                   "wall_seconds": time.perf_counter() - start})
                    key = run_key(record)  # a rerun (e.g. a changed task spec, --merge) replaces the earlier run
                    runs = [r for r in runs if run_key(r) != key] + [record]
                    if log:
                        log(f"{task} {precision} {side}{'' if side != 'nanoft' else f' ({sampler})'} seed {seed}: "
                            f"{record['metric_name']} {record['metric']:.4f}, {record.get('examples_per_s', 0):.1f} ex/s, "
                            f"{record['wall_seconds']:.0f} s")
        out = {"rows": summary_rows(runs), "runs": runs, "checks": checks(runs)}
        if name:
            write(out, preset, name, out_dir, notes, n_seeds)
    return out


def write(out: Dict[str, Any], preset: Preset, name: str, out_dir: Optional[Path], notes: str, seeds: int) -> None:
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    def per_task(field_name: str) -> Any:  # one value, or each task's where a task overrides the preset
        values = {t: getattr(ts, field_name) or getattr(preset, field_name) for t, ts in preset.tasks.items()}
        return (getattr(preset, field_name) if len(set(values.values())) == 1
                else ", ".join(f"{t} {v:g}" for t, v in values.items()))

    meta = {"preset": preset.description, "seeds per side": seeds, "epochs": per_task("epochs"),
            "batch size": preset.batch_size, "lr": per_task("lr"),
            "recipe": "AdamW (fused, eps 1e-8, weight decay 0.01 except biases/LayerNorm), linear schedule with "
                      "6% warmup, clipping 1.0; nanoft: Trainer, length-bucketed batches unless the sampler column "
                      "says random; transformers: AutoModelForSequenceClassification, shuffled batches, dynamic padding"}
    check_lines = ["", "## Recipe checks (from what every run reported)", "",
                   format_rows([{"task": t, **{k: (v if not isinstance(v, dict) else json.dumps(v))
                                              for k, v in c.items()}} for t, c in out["checks"].items()],
                               fmt="markdown")]
    paths = write_results(name, out["rows"], meta=meta, columns=COLUMNS, out_dir=out_dir,
                          notes="\n".join(([notes, ""] if notes else []) + check_lines))
    payload = json.loads(paths["json"].read_text(encoding="utf-8"))
    if os.path.basename(sys.argv[0]) == "parity.py":  # `python -m nanoft.bench.parity ...`: record it as the CLI
        payload["command"] = " ".join(["nanoft bench parity"] + sys.argv[1:])
        md = paths["markdown"].read_text(encoding="utf-8").splitlines()
        md[2] = f"Command: `{payload['command']}`"
        atomic_write_text(paths["markdown"], "\n".join(md) + "\n")
    payload.update({"runs": out["runs"], "checks": out["checks"]})
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / f"{name}.csv", format_rows(out["rows"], COLUMNS, fmt="csv") + "\n")


def cli(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nanoft bench parity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="small", help="tasks, sizes and recipe")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the preset's tasks")
    p.add_argument("--seeds", type=int, default=None, help="seeds per side [default: the preset's]")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    p.add_argument("--nanoft-sampler", default="bucket", help="comma-separated nanoft samplers: bucket, random")
    p.add_argument("--reference-schedule", choices=["nanoft", "transformers"], default="nanoft",
                   help="transformers' lr schedule: nanoft's per-step factors (identical recipe), or stock "
                        "get_linear_schedule_with_warmup (first step at lr 0)")
    p.add_argument("--model", default=None, help="model directory [default: installed MiniLM]")
    p.add_argument("--data-dir", default=None, help="data folder [default: $NANOFT_DATA_DIR]")
    p.add_argument("--name", default="parity", help="result file name in --out-dir")
    p.add_argument("--out-dir", default=None, help="result folder [default: bench/results]")
    p.add_argument("--no-isolate", action="store_true", help="run every side/seed in this process (no memory column)")
    p.add_argument("--sides", default="nanoft,transformers", help="comma-separated sides to run")
    p.add_argument("--merge", action="store_true",
                   help="add this invocation's runs to those already in --name's JSON and summarise them together "
                        "(a run of the same task, precision, side, sampler and seed replaces the earlier one)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = RunSpec(**json.loads(args.worker))
        try:
            print(json.dumps((run_nanoft if spec.side == "nanoft" else run_transformers)(spec), default=float))
        except NanoftError as e:
            print(json.dumps({"user_error": str(e)}))
            sys.exit(2)
        return
    data_dir = str(resolve_data_dir(args.data_dir))  # no data: one line now, not a failed worker later
    previous: List[Dict[str, Any]] = []
    if args.merge:
        path = (Path(args.out_dir) if args.out_dir else RESULTS_DIR) / f"{args.name}.json"
        if not path.is_file():
            raise ConfigError("nothing to merge with", path=str(path), fix="run without --merge first")
        earlier = json.loads(path.read_text(encoding="utf-8"))
        previous = earlier["runs"]
        merged_from = earlier.get("merged_from", []) + [earlier["command"]]
    else:
        merged_from = []
    out = run_parity(PRESETS[args.preset], tasks=args.tasks.split(",") if args.tasks else None, seeds=args.seeds,
                     precisions=[s.strip() for s in args.precision.split(",")],
                     samplers=[s.strip() for s in args.nanoft_sampler.split(",")], model=args.model,
                     data_dir=data_dir, isolate=not args.no_isolate, name=args.name,
                     reference_schedule=args.reference_schedule, previous=previous,
                     sides=[s.strip() for s in args.sides.split(",")],
                     out_dir=Path(args.out_dir) if args.out_dir else None,
                     log=lambda line: print(line, file=sys.stderr, flush=True),
                     notes=("".join(f"Runs merged from an earlier invocation: `{c}`. Rows whose runs come from "
                                    "different invocations compare speeds measured at different times (different "
                                    "load): read their speed-ups with care.\n\n" for c in merged_from)) + NOTES + "\n" + ("Warmup (stock transformers schedule in this run): "
                                             if args.reference_schedule == "transformers" else "Warmup: ")
                     + REFERENCE_SCHEDULE.split(": ", 1)[1])
    if merged_from and args.name:
        path = (Path(args.out_dir) if args.out_dir else RESULTS_DIR) / f"{args.name}.json"
        payload = json.loads(path.read_text(encoding="utf-8"))
        payload["merged_from"] = merged_from
        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
    print(format_table(out["rows"], COLUMNS))
    print(json.dumps({"environment": environment()["cpu_features"]}))


if __name__ == "__main__":
    cli()
