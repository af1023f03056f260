"""nanoft.weights: checkpoints (safetensors by memory map, HF key maps per family) and tokenizers."""
from nanoft.weights.checkpoint import (LoadReport, default_model_path, hf_state_dict, load_model, model_summary,
                                       read_config, save_model)
from nanoft.weights.tokenizer import TRUNCATIONS, Tokenizer, Truncation, load_tokenizer

__all__ = ["load_model", "save_model", "read_config", "LoadReport", "default_model_path", "hf_state_dict",
           "model_summary", "Tokenizer", "load_tokenizer", "Truncation", "TRUNCATIONS"]
