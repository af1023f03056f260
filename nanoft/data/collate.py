"""Turning a list of example indices into padded tensors, and a DataLoader-free batch loop."""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch

from nanoft.data.encode import EncodedDataset


def collate(dataset: EncodedDataset, indices: Sequence[int], pad_token_id: int,
            pad_to_multiple_of: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Pad the examples to the longest in the batch (rounded up to `pad_to_multiple_of`).

    Returns input_ids, attention_mask (1 = real token), token_type_ids: (B, T) long;
    labels: (B,) long or float (absent for unlabelled data); index: (B,) long, the example
    indices, so predictions can be put back in dataset order.
    """
    index = np.asarray(indices, dtype=np.int64)
    lengths = dataset.lengths[index]  # (B,)
    width = int(lengths.max()) if len(index) else 0
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    positions = np.arange(width)  # (T,)
    real = positions[None, :] < lengths[:, None]  # (B, T) True on real tokens
    source = dataset.offsets[index][:, None] + positions[None, :]  # (B, T) position in the flat arrays

    input_ids = np.full((len(index), width), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(index), width), dtype=np.int64)
    input_ids[real] = dataset.input_ids[source[real]]
    token_type_ids[real] = dataset.token_type_ids[source[real]]
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(real.astype(np.int64)),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "index": torch.from_numpy(index),
    }
    if dataset.labels is not None:
        labels = dataset.labels[index]
        batch["labels"] = torch.from_numpy(labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64))
    return batch


def batches(dataset: EncodedDataset, sampler: Iterable[List[int]], pad_token_id: int,
            pad_to_multiple_of: Optional[int] = None) -> Iterator[Dict[str, torch.Tensor]]:
    """Collated batches in the sampler's order (the sampler keeps its resumable position)."""
    for indices in sampler:
        yield collate(dataset, indices, pad_token_id, pad_to_multiple_of)
