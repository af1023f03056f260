"""nanoft.data: a task's examples -> cached token ids -> length-bucketed, padded batches.

Files are read by nanoft.tasks (nanoft.tasks.files); this package never reads a user file itself.

    data = encode(task.load(data_dir, "train"), tokenizer, max_length=128)
    sampler = BucketBatchSampler(data.lengths, batch_size=32, seed=0)
    for batch in batches(data, sampler, tokenizer.pad_token_id, pad_to_multiple_of=8): ...
"""
from nanoft.data.collate import batches, collate
from nanoft.data.encode import EncodedDataset, cache_root, encode
from nanoft.data.info import describe, padding_waste, task_summary
from nanoft.data.samplers import BucketBatchSampler, EvalBatchSampler, RandomBatchSampler, cut_batches

__all__ = ["BucketBatchSampler", "EncodedDataset", "EvalBatchSampler", "RandomBatchSampler", "batches", "cache_root",
           "collate", "cut_batches", "describe", "encode", "padding_waste", "task_summary"]
