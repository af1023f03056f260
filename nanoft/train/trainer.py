"""The training loop: data → model → objective's loss → optimizer, with evaluation, checkpoints and exact resume.

    trainer = Trainer(TrainConfig(task="sst2", data_dir="../shared/data", epochs=1))
    results = trainer.fit()

The Trainer wires the pieces (`build`), runs steps, evaluates and tracks the best model; the run
directory's layout is `RunDir`'s, saving and loading is the `Checkpointer`'s, and what a batch's loss
and an evaluation's metrics are is the `Objective`'s. One optimizer step consumes `grad_accum`
micro-batches; each micro-batch's mean loss is weighted by its share of the step's examples, so k
accumulated batches give exactly the gradient of one k-times-bigger batch, whatever their sizes
(length bucketing makes them differ). Under torchrun every rank sees the same global batches and
takes its slice of each, so N processes compute the same step as one process with an N-times-bigger batch.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from nanoft.errors import NanoftError
from nanoft.models import EncoderModel, count_parameters
from nanoft.progress import ProgressBar
from nanoft.train import build, distributed, elastic, statefile
from nanoft.train.checkpointer import Checkpointer, load_optimizer_state
from nanoft.train.config import TrainConfig, to_toml
from nanoft.train.objective import Objective, SequenceClassification
from nanoft.train.precision import autocast
from nanoft.train.rundir import RunDir
from nanoft.train.runtime import (Runtime, StopSignals, peak_memory_mb, reset_peak_memory, rng_state,
                                  seed_everything, set_rng_state, versions)
from nanoft.train.techniques import build_techniques

log = logging.getLogger(__name__)


class TrainingInterrupted(NanoftError):
    """SIGINT/SIGTERM arrived: the run saved a checkpoint and stopped; `--resume` continues it."""


class NonFiniteLoss(NanoftError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class Progress:
    """The loop's counters: saved with every checkpoint, restored on resume."""
    step: int = 0
    epoch: int = 0
    best: Optional[Dict[str, Any]] = None
    bad_evals: int = 0
    history_lines: int = 0
    train_seconds: float = 0.0
    examples_seen: int = 0
    tokens_seen: int = 0
    evaluated_step: int = -1  # the step of the last evaluation: a resumed run never evaluates a step twice
    token_pairs_seen: int = 0  # Σ n² over the sequences trained on: the attention term of the FLOP count

    @classmethod
    def from_state(cls, state: Dict[str, Any], where: str) -> "Progress":
        types = {"step": int, "epoch": int, "bad_evals": int, "history_lines": int, "train_seconds": float,
                 "examples_seen": int, "tokens_seen": int}
        values = {key: statefile.expect(state, key, kind, where) for key, kind in types.items()}
        for key in ("evaluated_step", "token_pairs_seen"):  # absent from checkpoints written before they were kept
            if key in state:
                values[key] = statefile.expect(state, key, int, where)
        best = state.get("best")
        if best is not None and not (isinstance(best, dict) and isinstance(best.get("score"), (int, float))):
            raise NanoftError("trainer state 'best' is malformed", path=where)
        return cls(best=best, **values)


def eval_batch_size(config: TrainConfig, data: Any) -> int:
    """--eval-batch-size, lowered so that one batch of the split's longest examples stays within
    --eval-max-tokens padded tokens (at least one example a batch)."""
    lengths = getattr(data, "lengths", None)
    if config.eval_max_tokens is None or lengths is None or len(lengths) == 0:
        return config.eval_batch_size
    longest = max(1, int(np.max(lengths)))
    return max(1, min(config.eval_batch_size, config.eval_max_tokens // longest))


class Trainer:
    """Trains an encoder for an Objective (default: the task's classification) and writes a run directory."""

    def __init__(self, config: TrainConfig, *, model: Optional[EncoderModel] = None, tokenizer: Any = None,
                 device: Optional[str] = None, progress: bool = True,
                 objective: Optional[Objective] = None) -> None:
        self.config = c = config.validate()
        runtime = Runtime.create(device, c.precision)
        self.device, self.dist, self.precision = runtime.device, runtime.dist, runtime.precision
        reset_peak_memory(self.device)  # results report this run's peak, not the process's so far
        self.show_progress = progress and not c.quiet and self.dist.is_main
        self.run_dir = RunDir(c.output or Path("runs") / self._default_name())
        # rank 0 checks the run directory (creating nothing: a run whose set-up fails leaves nothing behind) and
        # every rank gets its verdict; after a torchrun restart the run resumes from its last checkpoint
        self.config = c = elastic.start(self.run_dir, c, self.dist)
        seed_everything(c.seed)

        from nanoft.weights import load_tokenizer

        # An objective with its own data (masked-LM: a corpus) provides it; otherwise the config names a task.
        provides_data = objective is not None and hasattr(objective, "load_data")
        self.task = None if provides_data else build.load_task(c)
        self.objective = objective or SequenceClassification(self.task)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(c.model)
        self.load_report = None
        if model is None:
            model, self.load_report = build.load_model_for(c, self.objective.head, self.objective.num_labels)
        self.model = model.to(self.device)
        if c.resume:
            distributed.on_main(lambda: self.run_dir.check_resume_compatible(self._settings(), self.dist.world_size),
                                self.dist)
        self.techniques = build_techniques(c)
        for technique in self.techniques:
            technique.setup(self)
        if c.peft:
            from nanoft import peft

            peft.apply(self.model, c.peft, train_head=c.train_head, **c.peft_options)
        if provides_data:
            self.train_data, self.eval_data = self.objective.load_data(c, self.tokenizer)
        else:
            self.train_data = build.encode_split(c, self.task, self.tokenizer, "train", c.train_subset)
            self.eval_data = {split: build.encode_split(c, self.task, self.tokenizer, split)
                              for split in self.task.eval_splits if split in self.task.splits}
        self.sampler = build.make_sampler(c, self.train_data.lengths, self.dist.world_size)
        if len(self.sampler) == 0:  # an epoch without a step would loop, evaluating and checkpointing, forever
            raise NanoftError(f"no training batches: the training data has {len(self.train_data)} examples",
                              fix="check --train-file / --train-subset")
        (self.steps_per_epoch, self.total_steps, self.optimizer, self.scheduler,
         self.scaler) = build.make_optimization(c, self.model, len(self.sampler), self.precision, self.device)
        self.checkpointer = Checkpointer(self.run_dir, self.tokenizer, self.objective.label_names)
        self.progress = Progress()
        if c.resume:
            if self.dist.is_main:
                self.run_dir.find_checkpoint()  # recovers checkpoint.old after a crash mid-save
            distributed.barrier(self.dist)
            self._resume()
        self.forward_model: nn.Module = self.model
        if self.dist.enabled:
            self.forward_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if c.compile:
            self.forward_model = torch.compile(self.forward_model)

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    @property
    def task_name(self) -> str:
        return self.task.name if self.task is not None else getattr(self.objective, "name", "custom")

    @property
    def best(self) -> Optional[Dict[str, Any]]:
        return self.progress.best

    def _default_name(self) -> str:
        c = self.config
        return f"{c.task or Path(c.train_file or 'data').stem}-{c.peft or 'full'}-s{c.seed}"

    def _settings(self) -> Dict[str, Any]:
        """This run's settings as config.toml records them (the default model resolved to its path)."""
        now = {k: v for k, v in self.config.to_dict().items() if v is not None}
        if "model" not in now:
            from nanoft.weights import default_model_path

            now["model"] = str(default_model_path())
        return now

    # ------------------------------------------------------------------ step
    def forward(self, batch: Dict[str, torch.Tensor], model: Optional[nn.Module] = None) -> torch.Tensor:
        """The model's outputs for a collated batch (on the device), under the run's precision."""
        extra = self.objective.model_kwargs(batch) if hasattr(self.objective, "model_kwargs") else {}
        with autocast(self.precision, self.device):
            return (model or self.forward_model)(batch["input_ids"], attention_mask=batch["attention_mask"],
                                                 token_type_ids=batch["token_type_ids"], **extra)

    def compute_loss(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        outputs = self.forward(batch)
        loss = self.objective.loss(outputs, batch)
        for technique in self.techniques:
            loss = technique.loss(self, batch, outputs, loss)
        return loss, outputs

    def _step_groups(self) -> Iterator[List[List[int]]]:
        """Groups of `grad_accum` global batches (the last group of an epoch may be shorter)."""
        group: List[List[int]] = []
        for indices in self.sampler:
            group.append(indices)
            if len(group) == self.config.grad_accum:
                yield group
                group = []
        if group:
            yield group

    def train_step(self, group: List[List[int]]) -> Dict[str, float]:
        """One optimizer step over the micro-batches in `group`; returns loss and grad norm."""
        c, p = self.config, self.progress
        world, rank = self.dist.world_size, self.dist.rank
        total = sum(len(indices) for indices in group)
        self.model.train()
        loss_sum = 0.0
        for i, indices in enumerate(group):
            mine = indices[rank::world] if world > 1 else indices
            if not mine:
                continue
            batch = self.objective.collate(self.train_data, mine, self.tokenizer.pad_token_id, c.pad_to_multiple_of)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            loss, _ = self.compute_loss(batch)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss became {loss.item()} at step {p.step + 1}; the last good checkpoint "
                                    f"is kept in {self.run_dir.checkpoint}",
                                    fix="lower --lr, raise --warmup, or use --precision fp32")
            # weight = this micro-batch's share of the step's examples (× world: DDP averages over ranks)
            scaled = loss * (len(mine) / total * world)
            last = i == len(group) - 1 or not self.dist.enabled
            no_sync = self.forward_model.no_sync() if not last else contextlib.nullcontext()
            with no_sync:
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.item() * len(mine)
            p.examples_seen += len(mine)
            lengths = batch["attention_mask"].sum(-1)
            tokens, token_pairs = torch.stack([lengths.sum(), (lengths * lengths).sum()]).tolist()  # one host read
            p.tokens_seen += int(tokens)
            p.token_pairs_seen += int(token_pairs)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [q for q in self.model.parameters() if q.grad is not None]
        if c.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm))
        else:
            grad_norm = float(torch.norm(torch.stack([q.grad.detach().float().norm() for q in params]))) if params else 0.0
        for technique in self.techniques:
            technique.before_optimizer_step(self)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        p.step += 1
        for technique in self.techniques:
            technique.after_step(self)
        # the logged loss is the whole global batch's mean, as one process with the whole batch logs it
        loss_sum = float(distributed.all_reduce_sum(torch.tensor(loss_sum, dtype=torch.float64, device=self.device),
                                                    self.dist))
        return {"loss": loss_sum / max(1, total), "grad_norm": grad_norm}

    # ------------------------------------------------------------------ loop
    def fit(self, stop_at_step: Optional[int] = None) -> Dict[str, Any]:
        """Train to the configured length (or until `stop_at_step`, to simulate an interruption)."""
        c, p = self.config, self.progress
        distributed.on_main(lambda: self.run_dir.open(clear=c.overwrite and not c.resume), self.dist)
        try:
            elastic.check_shared(self.run_dir, self.dist, c)  # every rank must see rank 0's run directory
            if self.dist.is_main and p.step == 0:
                self.run_dir.write_config(to_toml(self._resolved_config()))
                if self.task is None:
                    self.run_dir.write_task({"task": None, "objective": self.task_name, "label_names": None})
                else:
                    self.run_dir.write_task({"task": self.task.to_dict() if hasattr(self.task, "to_dict")
                                             else self.task.name, "label_names": self.task.label_names})
            if p.step == 0:
                for technique in self.techniques:
                    technique.before_training(self)
                if c.export_every and self.dist.is_main:
                    self.export(self.run_dir.step_export(0))  # the starting point (random weights from scratch)
            wall_start = time.perf_counter()
            outcome = "epoch"
            with StopSignals() as signals:
                bar = ProgressBar(self.total_steps, desc="train", enabled=self.show_progress, initial=p.step)
                try:
                    while p.step < self.total_steps and outcome == "epoch":
                        outcome = self._train_epoch(bar, signals, stop_at_step)
                finally:
                    bar.close()
            if outcome == "paused":
                return {"stopped_at": p.step}
            if self.eval_data and p.evaluated_step != p.step and (
                    (c.eval_every and p.step % c.eval_every != 0) or (not c.eval_every and self._epoch_progress() > 0)):
                self._evaluate_and_track()  # training ended between scheduled evaluations
            self.save_checkpoint()
            extra: Dict[str, Any] = {}
            for technique in self.techniques:
                extra.update(technique.finish(self) or {})
            results = self._final_results(time.perf_counter() - wall_start, outcome == "early", extra)
            distributed.barrier(self.dist)
            return results
        finally:
            self.run_dir.close()
            distributed.teardown(self.dist)

    def _train_epoch(self, bar: ProgressBar, signals: StopSignals, stop_at_step: Optional[int]) -> str:
        """Steps until the epoch ends ("epoch"), training ends ("done"), early stopping ("early") or a
        signal / `stop_at_step` ("paused", after a checkpoint)."""
        c, p = self.config, self.progress
        self.sampler.set_epoch(p.epoch)
        if hasattr(self.objective, "set_epoch"):  # e.g. masked-LM draws new masks every epoch
            self.objective.set_epoch(p.epoch)
        window_start, window_examples = time.perf_counter(), p.examples_seen
        for group in self._step_groups():
            t0 = time.perf_counter()
            stats = self.train_step(group)
            p.train_seconds += time.perf_counter() - t0
            lr = self.scheduler.last_lr()[-1]
            bar.update(1, loss=stats["loss"], lr=lr, **{"ex/s": (p.examples_seen - window_examples) /
                                                       max(1e-9, time.perf_counter() - window_start)})
            if p.step % c.log_every == 0 or p.step == self.total_steps:
                self._log({"step": p.step, "epoch": round(p.epoch + self._epoch_progress(), 4),
                           "loss": stats["loss"], "lr": lr, "grad_norm": stats["grad_norm"],
                           "examples": p.examples_seen * self.dist.world_size,
                           "examples_per_s": p.examples_seen / max(1e-9, p.train_seconds)})
            if c.eval_every and p.step % c.eval_every == 0 and self._evaluate_and_track():
                return "early"
            if c.checkpoint_every and p.step % c.checkpoint_every == 0:
                self.save_checkpoint()
            if c.export_every and p.step % c.export_every == 0 and self.dist.is_main:
                self.export(self.run_dir.step_export(p.step))
            stop = distributed.any_rank(signals.received is not None, self.dist, self.device)  # all stop together
            if stop or stop_at_step == p.step:
                self.save_checkpoint()
                if stop:
                    raise TrainingInterrupted(f"interrupted at step {p.step}; checkpoint saved",
                                              path=str(self.run_dir), fix="continue with the same command plus --resume")
                return "paused"
            if p.step >= self.total_steps:
                return "done"
        p.epoch += 1
        if not c.eval_every and self.eval_data and self._evaluate_and_track():
            return "early"
        return "epoch"

    def _epoch_progress(self) -> float:
        state = self.sampler.state_dict()
        return min(1.0, state["consumed"] / max(1, len(self.sampler))) if state["epoch"] == self.epoch else 0.0

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str = "dev", model: Optional[nn.Module] = None, data: Any = None) -> Dict[str, float]:
        """The objective's metrics on `split`; every example is seen exactly once, also under DDP."""
        if data is None:
            data = self.eval_data.get(split)
        if data is None:
            if self.task is None:
                raise NanoftError(f"no {split!r} data to evaluate", fix=f"evaluate one of: {', '.join(self.eval_data)}")
            data = build.encode_split(self.config, self.task, self.tokenizer, split)
        return self.objective.evaluate(model or self.model, data, self.tokenizer.pad_token_id,
                                       eval_batch_size(self.config, data), self.device, self.precision,
                                       self.dist)

    def _evaluate_and_track(self) -> bool:
        """Evaluate every eval split, keep the best checkpoint, return True to stop early."""
        c, p = self.config, self.progress
        results = {split: self.evaluate(split) for split in self.eval_data}
        score = results[next(iter(results))][self.objective.main_metric]
        self._log({"step": p.step, "epoch": round(p.epoch + self._epoch_progress(), 4), "eval": results})
        p.evaluated_step = p.step
        sign = 1 if self.objective.greater_is_better else -1
        if not all(technique.may_be_best(self) for technique in self.techniques):
            pass  # e.g. not yet as sparse as asked: neither best nor a bad evaluation
        elif p.best is None or sign * score > sign * p.best["score"]:
            p.best = {"score": score, "step": p.step, "metrics": results}
            p.bad_evals = 0
            if c.save_best and self.dist.is_main:
                self.export(self.run_dir.best)
        else:
            p.bad_evals += 1
        log.info("step %d %s", p.step, results)
        self.save_checkpoint()
        return bool(c.early_stopping and p.bad_evals >= c.early_stopping)

    # ------------------------------------------------------------------ run directory
    def _resolved_config(self) -> Dict[str, Any]:
        values = self.config.to_dict()
        values["precision"] = self.precision
        values["model"] = self.config.model or str(self.load_report and self.load_report.path)
        values.pop("overwrite", None)
        values.pop("resume", None)
        return values

    def _log(self, record: Dict[str, Any]) -> None:
        if self.dist.is_main:
            self.run_dir.log(record, tensorboard=self.config.tensorboard)
            self.progress.history_lines += 1

    def export(self, directory: Path) -> None:
        """A loadable model in `directory` (HF layout; under PEFT the adapter plus a merged copy)."""
        self.checkpointer.export(self.model, directory,
                                 {k: v for t in self.techniques for k, v in t.export_files(self.model).items()})

    def save_checkpoint(self) -> None:
        """Model, optimizer, schedule, scaler, RNG, sampler, techniques and counters — atomically."""
        rng = rng_state(self.dist)  # every rank's generators: a collective, so no rank saves without the others
        if self.dist.is_main:
            self.checkpointer.save(self.model, {
                **asdict(self.progress), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": rng, "sampler": self.sampler.state_dict(),
                "techniques": [t.state_dict() for t in self.techniques]})
        distributed.barrier(self.dist)

    def _resume(self) -> None:
        state = self.checkpointer.load(self.model)
        where = str(self.run_dir.checkpoint)
        load_optimizer_state(self.optimizer, statefile.expect(state, "optimizer", dict, where), where)
        self.scheduler.load_state_dict(statefile.expect(state, "scheduler", dict, where))
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(statefile.expect(state, "sampler", dict, where))
        for technique, saved in zip(self.techniques, statefile.expect(state, "techniques", list, where)):
            technique.load_state_dict(saved)
        self.progress = Progress.from_state(state, where)
        if self.dist.is_main:
            self.run_dir.truncate_metrics(self.progress.history_lines)
        set_rng_state(statefile.expect(state, "rng", dict, where), self.dist)

    def _final_results(self, wall: float, stopped_early: bool, extra: Dict[str, Any]) -> Dict[str, Any]:
        p = self.progress
        test_metrics = None
        if self.task is not None and "test" in self.task.splits and "test" not in self.eval_data:
            try:
                test_data = build.encode_split(self.config, self.task, self.tokenizer, "test")
            except NanoftError:
                test_data = None
            if test_data is not None and test_data.labels is not None:
                test_metrics = self.evaluate("test", model=self._best_model(), data=test_data)
        total, trainable = count_parameters(self.model)
        results = {
            "task": self.task_name, "main_metric": self.objective.main_metric,
            "final": self.run_dir.last_eval() if p.best is not None else None, "best": p.best, "test": test_metrics,
            "steps": p.step, "epochs": round(p.epoch + self._epoch_progress(), 4), "stopped_early": stopped_early,
            "wall_seconds": round(wall, 3), "train_seconds": round(p.train_seconds, 3),
            "examples_per_s": p.examples_seen * self.dist.world_size / max(1e-9, p.train_seconds),
            "tokens_per_s": p.tokens_seen * self.dist.world_size / max(1e-9, p.train_seconds),
            "peak_memory_mb": peak_memory_mb(self.device), "precision": self.precision,
            "device": str(self.device), "world_size": self.dist.world_size,
            "parameters": total, "trainable_parameters": trainable,
            "train_examples": len(self.train_data), "versions": versions(), **self._flop_report(), **extra,
        }
        if self.dist.is_main:
            self.run_dir.write_results(results)
        return results

    def _flop_report(self) -> Dict[str, Any]:
        """Achieved training FLOP/s on the real tokens (nanoft.flops) and, on CPU, its share of the matmul peak."""
        from nanoft.flops import utilisation

        p, world = self.progress, self.dist.world_size
        # the classification head runs once per sequence; other objectives' heads are not counted (docs/flops.md)
        sequences = p.examples_seen * world if self.objective.head in ("classification", "regression") else 0
        return utilisation(self.model.config, p.tokens_seen * world, p.token_pairs_seen * world, sequences,
                           p.train_seconds, self.device, self.precision, self.model.num_labels or 1)

    def _best_model(self) -> nn.Module:
        if not (self.config.save_best and self.run_dir.best.is_dir()):
            return self.model
        from nanoft.weights import load_model

        return load_model(self.run_dir.best, head=self.model.head_kind, num_labels=self.model.num_labels,
                          device=self.device)


__all__ = ["Trainer", "TrainingInterrupted", "NonFiniteLoss", "Progress"]
