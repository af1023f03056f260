"""Masked-LM pretraining as an Objective: predict the masked tokens; evaluate loss and perplexity.

The model's vocabulary projection runs only at the masked positions (`masked_positions`, gathered
before the head): projecting every token onto a 30,522-word vocabulary costs more than the whole
MiniLM encoder, and all but ~15% of those logits would be thrown away.

Training masks are new every epoch (`set_epoch`); evaluation uses one fixed mask drawn with
`eval_mask_seed`, independent of the training seed, so two runs or two checkpoints are comparable.

With `document_mask`, each batch carries `document_ids` and the model attends only within documents
(each document of a packed block encoded as if alone), in training and evaluation alike.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.data import EvalBatchSampler
from nanoft.data.masking import EVAL_STREAM, Masker
from nanoft.data.packing import PackedDataset, document_grid, pack
from nanoft.errors import ConfigError


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the predicted tokens: logits `(n, vocab)`, labels `(n,)`."""
    return F.cross_entropy(logits.float(), labels)


class MaskedLM:
    """Masked-LM on a packed corpus: BERT's 80/10/10 masks at `rate`, optionally over whole words."""

    name = "masked-lm"
    head = "masked-lm"
    num_labels = 2  # unused by the masked-LM head
    main_metric = "perplexity"
    greater_is_better = False
    label_names: Optional[List[str]] = None

    def __init__(self, rate: float = 0.15, whole_word: bool = False, eval_mask_seed: int = 0,
                 document_mask: bool = False) -> None:
        if not 0 < rate < 1:
            raise ConfigError(f"mask rate must be in (0, 1), got {rate}", fix="e.g. --mask-rate 0.15")
        self.rate, self.whole_word, self.eval_mask_seed = rate, whole_word, eval_mask_seed
        self.document_mask = document_mask
        self.epoch = 0
        self.masker: Optional[Masker] = None  # made with the tokenizer, in load_data
        self.eval_masker: Optional[Masker] = None

    def prepare(self, tokenizer: Any, seed: int) -> None:
        """Maskers for training (seeded by the run) and evaluation (by eval_mask_seed)."""
        self.masker = Masker.for_tokenizer(tokenizer, self.rate, self.whole_word, seed)
        self.eval_masker = Masker(self.masker.mask_id, self.masker.replacements, self.rate, self.whole_word,
                                  self.eval_mask_seed)

    def load_data(self, config: Any, tokenizer: Any) -> Tuple[PackedDataset, Dict[str, PackedDataset]]:
        """The config's corpus packed into `max_length` blocks: (train, {"dev": held-out})."""
        from nanoft.train.corpus import load_corpus

        self.prepare(tokenizer, config.seed)
        (train, train_pairs), (dev, dev_pairs), name = load_corpus(config)
        source = getattr(config, "text_file", None) or name
        train_data = pack(tokenizer, train, config.max_length, train_pairs, source=source)
        dev_data = pack(tokenizer, dev, config.max_length, dev_pairs,
                        source=getattr(config, "dev_file", None) or f"{source} (held-out part)")
        return train_data, {"dev": dev_data}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def collate(self, data: Any, indices: List[int], pad_token_id: int,
                pad_to_multiple_of: Optional[int]) -> Dict[str, torch.Tensor]:
        return self._with_documents(
            self.masker.collate(data, indices, pad_token_id, pad_to_multiple_of, stream=self.epoch), data, indices)

    def _with_documents(self, batch: Dict[str, torch.Tensor], data: Any, indices: List[int]) -> Dict[str, torch.Tensor]:
        """Adds `document_ids` `(B, T)` under the document mask."""
        if self.document_mask:
            batch["document_ids"] = torch.from_numpy(document_grid(data, indices, batch["input_ids"].shape[1]))
        return batch

    def model_kwargs(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        extra = {"document_ids": batch["document_ids"]} if "document_ids" in batch else {}
        return {"masked_positions": batch["masked_positions"], **extra}

    def loss(self, outputs: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return mlm_loss(outputs, batch["mlm_labels"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, pad_token_id: int, batch_size: int, device: torch.device,
                 precision: str, dist: Any) -> Dict[str, float]:
        """Masked-LM loss (mean over all predicted tokens of the split) and its perplexity, on the fixed mask."""
        from nanoft.train import distributed
        from nanoft.train.precision import autocast

        was_training = model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64)  # (summed loss, predicted tokens)
        for indices in EvalBatchSampler(data.lengths, batch_size, rank=dist.rank, world_size=dist.world_size):
            batch = self._with_documents(self.eval_masker.collate(data, indices, pad_token_id, None,
                                                                  stream=EVAL_STREAM), data, indices)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(precision, device):
                logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                               token_type_ids=batch["token_type_ids"], **self.model_kwargs(batch))
            totals[0] += float(F.cross_entropy(logits.float(), batch["mlm_labels"], reduction="sum"))
            totals[1] += batch["mlm_labels"].numel()
        model.train(was_training)
        if dist.enabled:
            totals = distributed.all_reduce_sum(totals.to(device), dist).cpu()
        loss = float(totals[0] / max(1.0, float(totals[1])))
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(totals[1])}


__all__ = ["MaskedLM", "mlm_loss"]
