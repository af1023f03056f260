"""BitFit (Ben Zaken et al., 2022): train only the encoder's bias terms.

BitFit adds no layers: it picks some of the base model's own tensors (the biases) and trains them,
so it is trivially "merged" and its adapter file is just those biases (plus the head).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from torch import nn

from nanoft.errors import ConfigError
from nanoft.peft.registry import register
from nanoft.peft.targets import matches, short_names


@dataclass
class BitFitOptions:
    """Options of bitfit (`--bitfit-targets` on the command line)."""

    targets: Optional[Sequence[str]] = field(default=None, metadata={
        "patterns": True, "unset": "every bias in the encoder",
        "help": "Modules whose biases train, comma-separated."})


def bias_names(model: nn.Module, options: BitFitOptions) -> List[str]:
    """Every encoder bias, or those of modules the target patterns pick."""
    biases = [n for n, _ in model.named_parameters()
              if n.endswith("bias") and not n.startswith("head.") and ".core." not in n]
    if options.targets is None:
        return biases
    owners = [n.rpartition(".")[0] for n in biases]
    unmatched = [t for t in options.targets if not any(matches(t, o) for o in owners)]
    if unmatched:
        raise ConfigError(f"bitfit: target {', '.join(map(repr, unmatched))} matches no module with a bias; "
                          f"available: {', '.join(short_names(owners))}")
    return [n for n, o in zip(biases, owners) if any(matches(t, o) for t in options.targets)]


register("bitfit", BitFitOptions, parameters=bias_names, mergeable=True, lr=1e-3,
         lr_source="not swept; the top of the BitFit paper's range 1e-4..1e-3 (bench/results/peft_sst2.md's rate)")
