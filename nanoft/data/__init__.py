"""nanoft.data: files -> cached token ids -> length-bucketed, padded batches.

    data = encode(task.load(data_dir, "train"), tokenizer, max_length=128)
    sampler = BucketBatchSampler(data.lengths, batch_size=32, seed=0)
    for batch in batches(data, sampler, tokenizer.pad_token_id, pad_to_multiple_of=8): ...
"""
from nanoft.data.collate import batches, collate
from nanoft.data.encode import EncodedDataset, cache_root, encode
from nanoft.data.files import Table, detect_format, read_table
from nanoft.data.info import describe, padding_waste, task_summary
from nanoft.data.samplers import BucketBatchSampler, EvalBatchSampler, RandomBatchSampler, cut_batches

__all__ = ["BucketBatchSampler", "EncodedDataset", "EvalBatchSampler", "RandomBatchSampler", "Table", "batches",
           "cache_root", "collate", "cut_batches", "describe", "detect_format", "encode", "padding_waste",
           "read_table", "task_summary"]
