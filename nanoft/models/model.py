"""EncoderModel: the encoder plus an optional task head — what `nanoft.load_model` returns."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nanoft.config import ModelConfig
from nanoft.models.encoder import Encoder, Packing, init_weights
from nanoft.models.heads import MaskedLMHead, build_head


class EncoderModel(nn.Module):
    """Call it like its Hugging Face counterpart: `model(input_ids, attention_mask, token_type_ids)`.

    Returns the head's output (logits; `(batch,)` values for regression) or, with `head=None`,
    the last hidden state `(batch, seq, hidden)`. With `config.unpad=True`, per-token outputs (hidden
    states, token-classification and masked-LM logits over all positions) hold zeros at padding; the
    default (None) unpads only calls that return nothing at padding, so it never changes an output.
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
                masked_positions: Optional[torch.Tensor] = None,
                document_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`masked_positions` (masked-LM head only): flat indices `(n,)` into `(batch * seq)`; the logits are
        then `(n, vocab)`, computed only there (the vocabulary projection costs more than the encoder).
        `document_ids` `(batch, seq)`: the document of each token of packed blocks; attention stays within
        documents and positions restart at each, as if every document were run alone (runs unpadded)."""
        every_position = self.head is None or self.head_kind == "token-classification" or (
            isinstance(self.head, MaskedLMHead) and masked_positions is None)
        hidden, packing = self.encoder.encode(input_ids, attention_mask, token_type_ids, every_position,
                                              document_ids)
        if packing is not None:
            return self._unpadded_head(hidden, packing, masked_positions)
        if self.head is None:
            return hidden
        if isinstance(self.head, MaskedLMHead):
            if masked_positions is not None:
                hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)  # (n, hidden)
            return self.head(hidden, self.encoder.embeddings.word.weight)
        logits = self.head(hidden)
        return logits.squeeze(-1) if self.head_kind == "regression" else logits

    def _unpadded_head(self, hidden: torch.Tensor, packing: Packing,
                       masked_positions: Optional[torch.Tensor]) -> torch.Tensor:
        """The head's output from the packed `(total_tokens, hidden)` state, shaped as the padded path's: only
        the rows a head reads are gathered; per-token outputs get zeros at padding."""
        if self.head is None:
            return packing.unpack(hidden)  # (batch, seq, hidden)
        if isinstance(self.head, MaskedLMHead):
            word = self.encoder.embeddings.word.weight
            if masked_positions is not None:
                return self.head(hidden.index_select(0, packing.rows_of(masked_positions)), word)  # (n, vocab)
            return packing.unpack(self.head(hidden, word))  # (batch, seq, vocab)
        if self.head_kind == "token-classification":
            return packing.unpack(self.head(hidden))  # (batch, seq, num_labels)
        first = hidden.index_select(0, packing.first_rows())[:, None]  # (batch, 1, hidden): the heads read [:, 0]
        logits = self.head(first)
        return logits.squeeze(-1) if self.head_kind == "regression" else logits

    def init_weights(self) -> "EncoderModel":
        """Random BERT-style initialisation (for models trained from scratch and tests)."""
        init_weights(self)
        for module in self.modules():
            reset = getattr(module, "reset_parameters", None)
            if reset is not None and not isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                reset()
        return self
