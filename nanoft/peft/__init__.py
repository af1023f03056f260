"""Parameter-efficient fine-tuning: LoRA, rsLoRA, DoRA, PiSSA, VeRA, Houlsby/Pfeiffer adapters, BitFit, IA³.

    from nanoft import peft
    peft.apply(model, "lora", r=8, alpha=16, targets=["query", "value"])  # in place; head stays trainable
    peft.trainable_summary(model)           # {'trainable': ..., 'total': ..., 'percent': ...}
    peft.save_adapter(model, "out/")        # adapter.safetensors + adapter_config.json
    peft.load_adapter(base_model, "out/")   # same method re-applied, tensors loaded
    peft.merge_and_unload(model)            # plain model again: nanoft.save_model writes a normal checkpoint
    m = peft.load_adapters(base, {"sst2": "a/", "news": "b/"})  # many adapters, one base (nanoft/peft/multi.py)
    m(ids, attention_mask=mask, adapter_names=["sst2", "news"])  # each row its own adapter and head

Methods are registered by name beside their code (`peft.register`, see nanoft/peft/registry.py);
importing this package registers the built-in ones.
"""
# The method modules register themselves on import; their order here is the order of `names()`.
from nanoft.peft.registry import get, names, options_of, register, unregister
from nanoft.peft.lora import LoraAdapter, LoraLinear, LoraOptions
from nanoft.peft.pissa import PissaAdapter, PissaOptions
from nanoft.peft.vera import VeraAdapter, VeraOptions
from nanoft.peft.adapters import BottleneckAdapter, BottleneckOptions
from nanoft.peft.ia3 import IA3Adapter, IA3Options
from nanoft.peft.bitfit import BitFitOptions
from nanoft.peft.inject import (AdapterConfig, active_adapter, adapter_parameters, adapter_state, adapters_of,
                                add_adapter, apply, delete_adapter, is_mergeable, is_peft_model, mark_trainable, merge,
                                merge_and_unload, merged_copy, set_adapter, trainable_summary, unload, unmerge)
from nanoft.peft.io import (CONFIG_NAME, WEIGHTS_NAME, adapter_nbytes, base_fingerprint, load_adapter,
                            read_adapter_config, save_adapter)
from nanoft.peft.layers import HeadSwitch, PeftLayer
from nanoft.peft.multi import MultiAdapterModel, load_adapters
from nanoft.peft.targets import named_layers, select

__all__ = ["apply", "add_adapter", "set_adapter", "delete_adapter", "merge", "unmerge", "merge_and_unload", "unload",
           "merged_copy", "is_mergeable", "is_peft_model", "trainable_summary", "save_adapter", "load_adapter",
           "adapter_nbytes", "read_adapter_config", "adapters_of", "active_adapter", "adapter_parameters",
           "adapter_state", "mark_trainable", "base_fingerprint", "register", "unregister", "get", "names",
           "options_of", "AdapterConfig", "PeftLayer", "HeadSwitch", "LoraAdapter", "LoraLinear", "LoraOptions",
           "PissaAdapter", "PissaOptions", "VeraAdapter", "VeraOptions", "IA3Adapter", "IA3Options",
           "BottleneckAdapter", "BottleneckOptions", "BitFitOptions", "named_layers", "select",
           "WEIGHTS_NAME", "CONFIG_NAME", "MultiAdapterModel", "load_adapters"]
