"""EncoderModel: the encoder plus an optional task head — what `nanoft.load_model` returns."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nanoft.config import ModelConfig
from nanoft.models.encoder import Encoder, init_weights
from nanoft.models.heads import MaskedLMHead, build_head


class EncoderModel(nn.Module):
    """Call it like its Hugging Face counterpart: `model(input_ids, attention_mask, token_type_ids)`.

    Returns the head's output (logits; `(batch,)` values for regression) or, with `head=None`,
    the last hidden state `(batch, seq, hidden)`.
    """

    def __init__(self, config: ModelConfig, head: Optional[str] = None, num_labels: int = 2) -> None:
        super().__init__()
        self.config = config
        self.head_kind = head
        self.num_labels = 1 if head == "regression" else num_labels
        self.encoder = Encoder(config)
        self.head = build_head(config, head, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None,
                masked_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`masked_positions` (masked-LM head only): flat indices `(n,)` into `(batch * seq)`; the logits are
        then `(n, vocab)`, computed only there (the vocabulary projection costs more than the encoder)."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        if self.head is None:
            return hidden
        if isinstance(self.head, MaskedLMHead):
            if masked_positions is not None:
                hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)  # (n, hidden)
            return self.head(hidden, self.encoder.embeddings.word.weight)
        logits = self.head(hidden)
        return logits.squeeze(-1) if self.head_kind == "regression" else logits

    def init_weights(self) -> "EncoderModel":
        """Random BERT-style initialisation (for models trained from scratch and tests)."""
        init_weights(self)
        for module in self.modules():
            reset = getattr(module, "reset_parameters", None)
            if reset is not None and not isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                reset()
        return self
