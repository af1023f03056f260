"""Knowledge distillation (Hinton et al. 2015) from a fine-tuned teacher.

The student learns from the labels and from the teacher's softened distribution:

    loss = (1 − α) · CE(s, y) + α · T² · KL(softmax(t / T) ‖ softmax(s / T))

with the KL summed over classes and averaged over the batch; T² keeps the soft term's gradient
scale independent of T. The "CE" is the loss the trainer (and any earlier technique) computed.
α = 0 is plain training: no teacher pass runs.

The teacher is frozen and evaluated in eval mode (no dropout), so its logits on the training set
never change: they are computed once, before the first step, and cached in
`run_dir/teacher_logits.npy` (row i = training example i), which a resumed run reads back.
The teacher is a run directory (its `best/`, else `checkpoint/`) or a model directory; it must
have the task's labels (same number, same names) and read the same token ids (same vocabulary).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from nanoft.errors import ConfigError
from nanoft.io import atomic_write_bytes, atomic_write_json
from nanoft.train.techniques.base import Technique, TrainerView

log = logging.getLogger(__name__)

CACHE = "teacher_logits.npy"


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over classes, mean over the batch; logits (batch, classes)."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (batch,)
    return temperature ** 2 * kl.mean()


def distillation_loss(hard_loss: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """(1 − α) · hard_loss + α · T² · KL(teacher ‖ student) (formula in the module docstring)."""
    return (1.0 - alpha) * hard_loss + alpha * distillation_kl(student_logits, teacher_logits, temperature)


def resolve_teacher(path: str) -> Path:
    """The model directory inside a teacher run (best/, then checkpoint/), or `path` itself."""
    root = Path(path)
    for candidate in (root, root / "best", root / "checkpoint"):
        if (candidate / "config.json").is_file() and any(candidate.glob("model*.safetensors*")):
            return candidate
    raise ConfigError("no teacher model found", path=str(root),
                      fix="pass a run directory (with best/ or checkpoint/) or a model directory with "
                          "config.json and model.safetensors")


def _is_default(names: List[str]) -> bool:
    return all(n == f"LABEL_{i}" for i, n in enumerate(names))


def teacher_labels(model_dir: Path) -> List[str]:
    """The teacher's label names, from its config.json (id2label), or its run's task.json."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels") or len(id2label) or 2)
    names = [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(count)]
    task_file = model_dir.parent / "task.json"
    if _is_default(names) and task_file.is_file():  # a run's checkpoint/ keeps the names in task.json
        saved = json.loads(task_file.read_text(encoding="utf-8")).get("label_names")
        if saved and len(saved) == count:
            names = [str(n) for n in saved]
    return names


def check_teacher(model_dir: Path, task: Any) -> None:
    """Same number of labels and (where the teacher names them) the same names as the task."""
    if task.is_regression:
        raise ConfigError("distillation needs a classification task", path=str(model_dir),
                          fix="drop --distill-from for regression tasks")
    names = teacher_labels(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("problem_type") == "regression" or len(names) == 1:
        raise ConfigError("the teacher is a regression model (one output), not a classifier", path=str(model_dir),
                          fix="distil from a teacher fine-tuned on this classification task")
    wanted = [str(n) for n in task.label_names]
    if len(names) != len(wanted) or not (_is_default(names) or names == wanted):
        raise ConfigError(f"teacher labels [{', '.join(names)}] differ from the task's [{', '.join(wanted)}]",
                          path=str(model_dir), fix="distil from a teacher fine-tuned on this task")


def _read_cache(path: Path, meta: Path, key: Dict[str, Any], shape: tuple) -> Optional[torch.Tensor]:
    """The cached teacher logits if they belong to this teacher and data and have the right shape; a
    damaged or foreign cache is recomputed (never unpickled: `allow_pickle=False`)."""
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        if json.loads(meta.read_text(encoding="utf-8")) != key:
            return None
        logits = np.load(path, allow_pickle=False)
    except (ValueError, OSError, UnicodeDecodeError):
        log.warning("teacher-logit cache %s is unreadable; recomputing it", path)
        return None
    if logits.shape != shape or logits.dtype != np.float32 or not np.isfinite(logits).all():
        log.warning("teacher-logit cache %s does not fit this run; recomputing it", path)
        return None
    return torch.from_numpy(logits)


class Distillation(Technique):
    name = "distill"

    def __init__(self, teacher: str, alpha: float, temperature: float) -> None:
        self.teacher_path = teacher
        self.alpha = alpha
        self.temperature = temperature
        self.model_dir: Optional[Path] = None
        self.teacher_logits: Optional[torch.Tensor] = None  # (n_train, classes), on the device

    def setup(self, trainer: TrainerView) -> None:
        self.model_dir = resolve_teacher(self.teacher_path)
        check_teacher(self.model_dir, trainer.task)
        self._check_vocabulary(trainer)

    def _check_vocabulary(self, trainer: TrainerView) -> None:
        has_tokenizer = any((self.model_dir / f).is_file() for f in ("tokenizer.json", "vocab.txt", "vocab.json"))
        if not has_tokenizer:
            return  # a bare model directory: assume it reads the student's token ids
        from nanoft.weights import load_tokenizer

        theirs = load_tokenizer(self.model_dir).backend.get_vocab()
        if theirs != trainer.tokenizer.backend.get_vocab():
            raise ConfigError("teacher uses a different vocabulary than the student", path=str(self.model_dir),
                              fix="distil from a teacher with the student's tokenizer")

    def loss(self, trainer: TrainerView, batch: Dict[str, torch.Tensor], logits: torch.Tensor,
             loss: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0:
            return loss
        if self.teacher_logits is None:
            self.teacher_logits = self._teacher_logits(trainer).to(logits.device)
        teacher = self.teacher_logits[batch["index"].to(logits.device)]  # (batch, classes)
        return distillation_loss(loss, logits, teacher, self.alpha, self.temperature)

    def _teacher_logits(self, trainer: TrainerView) -> torch.Tensor:
        """Teacher logits for every training example: read from the run's cache, or computed once."""
        path = trainer.run_dir / CACHE
        key = {"teacher": str(self.model_dir.resolve()), "data": trainer.train_data.key,
               "examples": len(trainer.train_data), "max_length": trainer.config.max_length}
        meta = path.with_suffix(".json")
        cached = _read_cache(path, meta, key, (len(trainer.train_data), trainer.task.num_labels))
        if cached is not None:
            return cached
        from nanoft.train.evaluate import predict_logits
        from nanoft.train.trainer import eval_batch_size
        from nanoft.weights import load_model

        teacher = load_model(self.model_dir, head="classification", num_labels=trainer.task.num_labels,
                             max_length=trainer.config.max_length, device=trainer.device)
        logits = predict_logits(teacher, trainer.train_data, trainer.tokenizer.pad_token_id,
                                eval_batch_size(trainer.config, trainer.train_data), trainer.device,
                                trainer.precision, trainer.dist)
        del teacher
        if trainer.dist.is_main:
            atomic_write_bytes(path, lambda f: np.save(f, logits.numpy()))
            atomic_write_json(meta, key)
        log.info("teacher logits for %d training examples cached in %s", len(logits), path)
        return logits

    def finish(self, trainer: TrainerView):
        return {"distill": {"teacher": str(self.model_dir), "alpha": self.alpha, "temperature": self.temperature}}
