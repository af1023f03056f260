"""Sparse encoders: masks on the encoder's weights that a training loop keeps applied.

    from nanoft import sparse
    pruner = sparse.build("gradual", model, sparse.SparsityOptions(sparsity=0.8, prune_every=50))
    pruner.setup()
    ...  loss.backward(); pruner.before_optimizer_step(step + 1, total); opt.step(); pruner.after_step(step + 1, total)

    method      module      what
    magnitude   magnitude   one-shot: smallest |w| pruned before training (per matrix or global)
    gradual     magnitude   Zhu & Gupta 2017 cubic schedule from s_i to s_f, every Δt steps
    movement    movement    Sanh et al. 2020 (hard): same schedule, lowest accumulated −W·∇W pruned
    rigl        rigl        Evci et al. 2020: fixed sparsity, drop by |w|, grow by |grad|, cosine-decayed fraction
    N:M (2:4)   nm          keep N of every M weights along the input dimension
    keep        keep        a pruned run's saved masks (masks.safetensors), fixed: continued sparse training

`nanoft train --prune METHOD` runs the same pruners through the training technique
`nanoft.train.techniques.sparsity`; `sparsity_report` counts the zeros three ways.
"""
from nanoft.sparse.base import (DISTRIBUTIONS, Pruner, SparsityOptions, erk_densities, keep_largest, magnitude_masks,
                                score_masks, select_weights)
from nanoft.sparse.keep import MASKS_FILE, SavedMasks, load_masks, masks_path
from nanoft.sparse.magnitude import GradualMagnitude, OneShotMagnitude, cubic_sparsity
from nanoft.sparse.movement import MovementPruning
from nanoft.sparse.nm import NMSparsity, nm_mask
from nanoft.sparse.registry import build, check, get, names, parse_nm, register, unregister
from nanoft.sparse.report import block_report, describe_sparsity, sparsity_report
from nanoft.sparse.rigl import RigL, rigl_fraction, rigl_update

__all__ = ["DISTRIBUTIONS", "Pruner", "SparsityOptions", "erk_densities", "keep_largest", "magnitude_masks",
           "score_masks", "select_weights", "MASKS_FILE", "SavedMasks", "load_masks", "masks_path", "MovementPruning",
           "GradualMagnitude", "OneShotMagnitude", "cubic_sparsity", "NMSparsity", "nm_mask",
           "build", "check", "get", "names", "parse_nm", "register", "unregister", "sparsity_report", "block_report",
           "describe_sparsity", "RigL",
           "rigl_fraction", "rigl_update"]
