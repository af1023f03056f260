"""TrainConfig: every option of a run, one dataclass; read from / written to TOML.

The CLI, `nanoft run experiments.toml` and Python callers all fill this same object, so an
option means the same thing everywhere and a run's `config.toml` replays it exactly. Each field's
metadata holds its `nanoft train --help` section and text; nanoft/cli.py builds the flags from them.
"""
from __future__ import annotations

import dataclasses
import difflib
import collections.abc
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from nanoft.errors import ConfigError

try:  # Python 3.11+
    import tomllib as _toml
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as _toml  # type: ignore


# Sections of `nanoft train --help`, in order: {metadata "section": heading}.
SECTIONS = {
    "data": "Data",
    "model": "Model",
    "peft": "Parameter-efficient fine-tuning",
    "optimization": "Optimization",
    "techniques": "Fine-tuning techniques",
    "sparsity": "Sparsity and pruning",
    "evaluation": "Evaluation",
    "run": "Run directory and logging",
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FULL_FINETUNING_LR = 5e-5  # BERT's rate; each PEFT method carries its own recipe rate (nanoft.peft registry)
SAMPLERS = ("bucket", "random")
LABEL_TYPES = ("auto", "classification", "regression")


# Choice lists come from the registries, read when the CLI is built (so later registrations count).
def _tasks() -> List[str]:
    from nanoft.tasks import available

    return available()


def _attention_kinds() -> List[str]:
    from nanoft.attention import names

    return names()


def _peft_methods() -> List[str]:
    from nanoft import peft

    return peft.names()


def _schedules() -> List[str]:
    from nanoft.train.schedules import SCHEDULES

    return list(SCHEDULES)


def parse_scalar(text: str) -> Any:
    """A KEY=VALUE option's value as typed: int, float, true/false, else the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def default_lr(peft_method: Optional[str]) -> float:
    """The learning rate of a run that names none: the --peft method's recipe rate (its registry record),
    else full fine-tuning's."""
    if peft_method:
        from nanoft import peft

        rate = peft.get(peft_method).lr
        if rate is not None:
            return rate
    return FULL_FINETUNING_LR


def _lr_shown() -> str:
    """--lr's default as `--help` shows it: full fine-tuning's rate and each method's recipe rate."""
    from nanoft import peft

    rates = ", ".join(f"{m} {peft.get(m).lr:g}" for m in peft.names() if peft.get(m).lr is not None)
    return f"{FULL_FINETUNING_LR:g}; with --peft, the method's recipe rate: {rates}"


def _optimizers() -> List[str]:
    from nanoft.train.optim import OPTIMIZERS

    return list(OPTIMIZERS)


def _section(name: str) -> Callable[..., Any]:
    """A field maker for one section: `_data(default, help, **metadata)`.

    Metadata the CLI reads: "help" (what the option does, never its default: click shows that),
    "flag" (when not --field-name), "choices" (a list, or a function returning one), "multiple"
    (the flag may repeat), "metavar", "unset" (what a None/empty default means, shown as the
    default) and "off" (a value that means None, e.g. --max-grad-norm 0).
    """
    def make(default: Any = None, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
             **metadata: Any) -> Any:
        metadata = {"section": name, "help": help, **metadata}
        if factory is not None:
            return field(default_factory=factory, metadata=metadata)
        return field(default=default, metadata=metadata)

    return make


# Named with a leading underscore: `model` and `peft` are also field names in the class body.
_data, _model, _peft, _optimization, _techniques, _sparsity, _evaluation, _run = map(_section, SECTIONS)


def _pruning(name: str) -> Any:
    """A sparsity field whose default, help and choices are those of nanoft.sparse.SparsityOptions (written once)."""
    from nanoft.sparse.base import SparsityOptions

    f = next(f for f in dataclasses.fields(SparsityOptions) if f.name == name)
    metadata = dict(f.metadata)
    factory = None if f.default_factory is dataclasses.MISSING else f.default_factory
    return _sparsity(None if factory else f.default, metadata.pop("help"), factory=factory, **metadata)


def _truncation(name: str) -> Any:
    """A data field whose default, help and choices are those of nanoft.weights.Truncation (written once)."""
    from nanoft.weights.tokenizer import Truncation

    f = next(f for f in dataclasses.fields(Truncation) if f.name == name)
    metadata = dict(f.metadata)
    return _data(f.default, metadata.pop("help"), **metadata)


@dataclass
class TrainConfig:
    """Every option of a run; `nanoft train --help` is generated from these fields."""

    # ---- data
    task: Optional[str] = _data(None, "Built-in task to train on.", choices=_tasks)
    train_file: Optional[str] = _data(None, "Your own training file (TSV, CSV, JSONL, Parquet or Arrow), instead of --task.",
                                      metavar="FILE")
    dev_file: Optional[str] = _data(None, "Dev file for --train-file; without one, dev is carved out with --split.",
                                    metavar="FILE")
    test_file: Optional[str] = _data(None, "Test file for --train-file.", metavar="FILE")
    text_columns: List[str] = _data(help="Text column of your file; give it twice for sentence pairs.",
                                    factory=list, flag="--text-column", multiple=True, unset="text")
    label_column: Optional[str] = _data(None, "Label column of your file (integers, names or floats).",
                                        unset="label")
    label_type: str = _data("auto", "How --train-file's labels are read: auto (integers or names are classes, other "
                                    "numbers regression), classification (e.g. labels 0.0/1.0) or regression (e.g. "
                                    "integer scores 1-5).", choices=list(LABEL_TYPES))
    no_header: bool = _data(False, "Your files have no header row; columns are then 0-based integers.")
    split: Optional[str] = _data(None, "Carve train/dev/test out of --train-file by these fractions, e.g. "
                                       "0.8,0.1,0.1 (seeded, stratified).",
                                 unset="0.9,0.1 when no --dev-file is given")
    data_dir: Optional[str] = _data(None, "Folder holding the task data.", metavar="DIR", unset="$NANOFT_DATA_DIR")
    train_subset: Optional[int] = _data(None, "Train on a seeded random subset of N examples.")
    max_length: int = _data(128, "Truncate inputs to this many tokens; longer than the model's positions "
                                 "extends its position table.")
    truncation: str = _truncation("strategy")
    truncation_head_tokens: int = _truncation("head_tokens")
    # ---- model
    model: Optional[str] = _model(None, "Model directory in Hugging Face layout (config.json + model.safetensors).",
                                  metavar="DIR", unset="the installed MiniLM-L6-H384")
    attention: Optional[str] = _model(None, "Replace full attention by this kind.", choices=_attention_kinds)
    attention_options: Dict[str, Any] = _model(help="An option of the attention kind as KEY=VALUE, e.g. "
                                                    "window=128; repeatable.", factory=dict,
                                               flag="--attention-option", multiple=True, metavar="KEY=VALUE")
    attention_transfer_steps: int = _techniques(0, "Before fine-tuning a converted --attention kind with "
                                                   "parameters of its own (Linformer), train only those for N "
                                                   "batches to reproduce the checkpoint's exact attention, layer by "
                                                   "layer (attention transfer); 0 is off.")
    attention_transfer_lr: float = _techniques(1e-3, "Attention transfer: Adam learning rate.")
    hidden_dropout: Optional[float] = _model(None, "Dropout on embeddings and sublayer outputs.",
                                             unset="the checkpoint's")
    attention_dropout: Optional[float] = _model(None, "Dropout on attention probabilities; 0 lets CPU SDPA use its "
                                                      "fused kernel (faster, O(n) memory on long inputs).",
                                                unset="the checkpoint's")
    unpad: Optional[bool] = _model(None, "Run the encoder on the batch's real tokens only: padding dropped once "
                                         "after the embeddings, attention over packed sequences. Full attention "
                                         "only; other --attention kinds keep the padded path.",
                                   flag="--unpad/--no-unpad",
                                   unset="auto: on for CPU, and for CUDA in fp16/bf16 (Triton kernels); never "
                                         "changes an output")
    # ---- parameter-efficient fine-tuning
    peft: Optional[str] = _peft(None, "Train only an adapter of this method; the base model stays frozen.",
                                choices=_peft_methods)
    # No flag of its own: each registered method's options are flags (--lora-r, ...), see nanoft.peft.registry.
    peft_options: Dict[str, Any] = _peft(help="Options of the --peft method, by name.", factory=dict,
                                         peft_registry=True)
    train_head: bool = _peft(True, "Keep the task head trainable under PEFT.")
    lora_plus_ratio: Optional[float] = _peft(None, "LoRA+: train every LoRA B matrix at this many times the rate "
                                                   "of A (lora, rslora, dora, pissa), e.g. 16.", unset="off")
    # ---- batching and optimisation
    epochs: float = _optimization(3.0, "Passes over the training data (fractions allowed).")
    max_steps: Optional[int] = _optimization(None, "Stop after this many optimizer steps (overrides --epochs).")
    batch_size: int = _optimization(32, "Examples per batch, per process.")
    max_tokens: Optional[int] = _optimization(None, "Also cap the padded tokens per batch (a token budget).")
    sampler: str = _optimization("bucket", "bucket: batches of similar length (little padding: the fast default); "
                                           "random: shuffled batches, safer for runs of a few dozen steps over texts "
                                           "of very different lengths (IMDB, 30 steps: 78.42 vs 74.75 accuracy, "
                                           "bench/results/parity_medium.md).", choices=SAMPLERS)
    pad_to_multiple_of: Optional[int] = _optimization(None, "Pad each batch's length up to a multiple of N "
                                                            "(e.g. 8 for tensor cores).")
    optimizer: str = _optimization("adamw", "adamw: decoupled weight decay; sgd: Nesterov momentum.",
                                   choices=_optimizers)
    lr: Optional[float] = _optimization(None, "Peak learning rate (the head's, under layer-wise decay).",
                                        unset=_lr_shown)
    weight_decay: float = _optimization(0.01, "Weight decay, never on biases and LayerNorm weights.")
    momentum: float = _optimization(0.9, "SGD momentum.")
    adam_eps: float = _optimization(1e-8, "AdamW epsilon, added to the denominator for numerical stability.")
    schedule: str = _optimization("linear", "Learning-rate schedule after warmup.", choices=_schedules)
    warmup: float = _optimization(0.06, "Warmup: a fraction of all steps if < 1, else a number of steps.")
    cycle_steps: int = _optimization(2000, "Cyclic schedule: steps per half cycle.")
    grad_accum: int = _optimization(1, "Accumulate gradients over N batches per optimizer step.")
    max_grad_norm: Optional[float] = _optimization(1.0, "Clip the gradient norm to this value; 0 turns clipping off.",
                                                   off=0)
    precision: str = _optimization("auto", "auto: bf16 where the hardware has it natively, else fp32.",
                                   choices=PRECISIONS)
    compile: bool = _optimization(False, "torch.compile the model.", flag="--compile/--no-compile")
    gradient_checkpointing: bool = _optimization(False, "Recompute each encoder layer in the backward pass: "
                                                        "activation memory of one layer instead of all, about 30% "
                                                        "more compute (for long inputs).")
    layerwise_lr_decay: Optional[float] = _optimization(None, "Layer-wise lr decay in (0, 1]: each layer below the "
                                                              "head gets lr × factor^depth.")
    layer_lrs: Optional[List[float]] = _optimization(None, "Explicit learning rates, comma-separated: embeddings, "
                                                           "each layer, head.", metavar="LR,LR,...")
    # ---- fine-tuning techniques (nanoft.train.techniques)
    reinit_layers: int = _techniques(0, "Re-initialise the top K encoder layers (and the pooler) before training.")
    rdrop_alpha: float = _techniques(0.0, "R-Drop: weight of the symmetric KL between two dropout passes; 0 is off.")
    swa_start: Optional[float] = _techniques(None, "SWA: start averaging weights at this fraction of training (< 1) "
                                                   "or step (>= 1).")
    swa_every: int = _techniques(1, "SWA: steps between snapshots.")
    unfreeze_every: Optional[int] = _techniques(None, "Gradual unfreezing: unfreeze one more block, top first, "
                                                      "every N steps.")
    distill_from: Optional[str] = _techniques(None, "Knowledge distillation: the teacher's run or model directory.",
                                              metavar="DIR")
    distill_alpha: float = _techniques(0.5, "Distillation: weight of the soft-target loss.")
    distill_temperature: float = _techniques(2.0, "Distillation: softmax temperature.")
    child_tuning_p: Optional[float] = _techniques(None, "Child-Tuning-F: keep each gradient entry with probability "
                                                        "p (rescaled by 1/p) at every step, e.g. 0.3.")
    # ---- sparsity (nanoft.sparse, through the technique nanoft.train.techniques.sparsity)
    prune: Optional[str] = _sparsity(None, "Prune the encoder: magnitude (one-shot, before training), gradual "
                                           "(cubic schedule), movement (same schedule, by movement), rigl (sparse "
                                           "training), N:M such as 2:4, or keep (a pruned run's saved masks).",
                                     metavar="METHOD")
    sparsity: Optional[float] = _pruning("sparsity")
    sparsity_initial: float = _pruning("sparsity_initial")
    sparsity_distribution: str = _pruning("sparsity_distribution")
    sparsity_targets: List[str] = _pruning("sparsity_targets")
    sparsity_embeddings: bool = _pruning("sparsity_embeddings")
    sparsity_head: bool = _pruning("sparsity_head")
    prune_start: float = _pruning("prune_start")
    prune_end: float = _pruning("prune_end")
    prune_every: int = _pruning("prune_every")
    rigl_fraction: float = _pruning("rigl_fraction")
    prune_masks: Optional[str] = _pruning("prune_masks")
    # ---- evaluation
    eval_every: Optional[int] = _evaluation(None, "Evaluate every N steps.", unset="at the end of each epoch")
    eval_batch_size: int = _evaluation(128, "Batch size for evaluation.")
    eval_max_tokens: Optional[int] = _evaluation(
        65536, "Cap on one evaluation batch's padded tokens: a split whose longest example has L tokens is "
               "evaluated in batches of min(--eval-batch-size, this // L), so long documents do not need "
               "more memory to evaluate than to train (2048 tokens: 32 a batch).")
    early_stopping: Optional[int] = _evaluation(None, "Stop after N evaluations without improvement.")
    save_best: bool = _evaluation(True, "Keep the best model (by the task's main metric) in RUN/best.")
    # ---- run directory and logging
    seed: int = _run(42, "Seed for weight init, data order and dropout.")
    output: Optional[str] = _run(None, "Run directory.", metavar="DIR", unset="runs/<task>-<method>-s<seed>")
    overwrite: bool = _run(False, "Replace an existing run directory.")
    resume: bool = _run(False, "Continue the run in --output from its checkpoint, bit for bit.")
    log_every: int = _run(20, "Write training metrics every N steps.")
    quiet: bool = _run(False, "No progress bar.")
    tensorboard: bool = _run(False, "Also write TensorBoard events (needs tensorboard installed).")
    checkpoint_every: Optional[int] = _run(None, "Also checkpoint every N steps.",
                                           unset="at each evaluation and at the end")
    export_every: Optional[int] = _run(None, "Also export the model every N steps to RUN/step-N/ (HF layout, "
                                             "loadable by --model), and the starting model to RUN/step-0/: "
                                             "checkpoints along a pretraining curve.")

    def __post_init__(self) -> None:
        # lr None means "this run's default", resolved once here so that the trainer, config.toml and every
        # caller see the same number (a --peft method's recipe rate, see default_lr)
        if self.lr is None:
            self.lr = default_lr(self.peft)
        # paths may be given as Path objects from Python; the config holds (and config.toml records) strings
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike):
                setattr(self, f.name, os.fspath(value))

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        self.check_data()
        return self.check_values()

    def check_data(self) -> None:
        """The data options name exactly one source (a subclass with other sources overrides this)."""
        if not self.task and not self.train_file:
            raise ConfigError("no data given", fix="pass --task NAME or --train-file FILE")
        if self.task and self.train_file:
            raise ConfigError("both --task and --train-file given", fix="use one of them")

    def check_types(self, source: Optional[str] = None) -> None:
        """Every field holds a value of its declared type (a TOML file or a Python caller can give anything)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            if not _is_instance(value, kind):
                raise ConfigError(f"{f.name} must be {_type_name(kind)}, got {value!r}", path=source,
                                  fix=f"see {f.metadata.get('flag') or '--' + f.name.replace('_', '-')} in "
                                      "`nanoft train --help`")

    def check_values(self) -> "TrainConfig":
        self.check_types()
        if self.attention_options and not self.attention:
            raise ConfigError(f"attention options {sorted(self.attention_options)} given without --attention",
                              fix="name the kind with --attention, or drop the options")
        if self.peft_options and not self.peft:
            raise ConfigError(f"PEFT options {sorted(self.peft_options)} given without --peft (they would be ignored)",
                              fix="name the method with --peft (e.g. --peft lora), or drop the options")
        at_least_one = [name for name in ("train_subset", "max_steps", "log_every", "max_tokens", "eval_batch_size",
                                          "eval_max_tokens", "export_every")
                        if isinstance(getattr(self, name, None), int) and getattr(self, name) < 1]
        if at_least_one:
            name = at_least_one[0]
            raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}",
                              fix=f"leave --{name.replace('_', '-')} out for its default")
        checks = [
            (self.batch_size >= 1, "batch_size must be ≥ 1"),
            (self.grad_accum >= 1, "grad_accum must be ≥ 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.epochs > 0 or self.max_steps is not None, "epochs or max_steps must be > 0"),
            (self.max_length >= 2, "max_length must be ≥ 2"),
            (self.warmup >= 0, "warmup must be ≥ 0"),
            (self.precision in PRECISIONS, "precision must be auto, fp32, bf16 or fp16"),
            (self.sampler in SAMPLERS, "sampler must be bucket or random"),
            (self.label_type in LABEL_TYPES, "label_type must be auto, classification or regression"),
            (self.label_type == "auto" or not self.task, "--label-type applies to --train-file (a built-in task "
                                                         "has its own labels)"),
            (self.rdrop_alpha >= 0, "rdrop_alpha must be ≥ 0"),
            (0 <= self.distill_alpha <= 1, "distill_alpha must be in [0, 1]"),
            (self.distill_temperature > 0, "distill_temperature must be > 0"),
            (self.reinit_layers >= 0, "reinit_layers must be ≥ 0"),
            (self.attention_transfer_steps >= 0, "attention_transfer_steps must be ≥ 0"),
            (self.attention_transfer_lr > 0, "attention_transfer_lr must be > 0"),
            (not self.attention_transfer_steps or bool(self.attention), "attention_transfer_steps needs --attention "
                                                                         "(a converted kind, e.g. linformer)"),
            (not self.attention_transfer_steps or not self.peft, "attention_transfer_steps with --peft is not "
                                                                 "supported: an adapter file would not keep the "
                                                                 "transferred projections"),
            (self.hidden_dropout is None or 0 <= self.hidden_dropout < 1, "hidden_dropout must be in [0, 1)"),
            (self.attention_dropout is None or 0 <= self.attention_dropout < 1, "attention_dropout must be in [0, 1)"),
            (self.child_tuning_p is None or 0 < self.child_tuning_p <= 1, "child_tuning_p must be in (0, 1]"),
            (self.lora_plus_ratio is None or self.lora_plus_ratio > 0, "lora_plus_ratio must be > 0"),
            (self.lora_plus_ratio is None or bool(self.peft), "lora_plus_ratio needs --peft (lora, rslora, dora or "
                                                              "pissa): it sets the rate of LoRA's B matrices"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from nanoft.weights.tokenizer import Truncation

        Truncation.from_config(self).check(self.max_length)
        if self.prune is not None:
            from nanoft import sparse

            if self.peft:
                raise ConfigError(f"--prune cannot be combined with --peft {self.peft}",
                                  fix="prune with full fine-tuning (merging an adapter would fill the zeros back in)")
            sparse.check(self.prune, sparse.SparsityOptions.from_config(self))
        if self.layerwise_lr_decay is not None and not 0 < self.layerwise_lr_decay <= 1:
            raise ConfigError(f"layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}",
                              fix="typical values are 0.8–0.95")
        return self

    def warmup_steps(self, total_steps: int) -> int:
        return int(self.warmup) if self.warmup >= 1 else int(math.ceil(self.warmup * total_steps))

    # ------------------------------------------------------------------ dict / TOML
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: str = "config") -> "TrainConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                option = _peft_option_of_key(key)
                if option is not None:
                    hint = f"PEFT options go in one table: peft_options = {{{option} = ...}} (with peft = \"...\")"
                else:
                    near = difflib.get_close_matches(key, names, n=1)
                    hint = f"did you mean {near[0]!r}?" if near else "see `nanoft train --help`"
                raise ConfigError(f"unknown config key {key!r}", path=source, fix=hint)
        try:
            config = cls(**values)
        except (TypeError, ValueError) as e:  # __post_init__ on a value of the wrong type
            raise ConfigError(f"invalid value: {e}", path=source) from None
        config.check_types(source)
        return config

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def read_toml(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path=str(path))
    try:
        return _toml.loads(path.read_text(encoding="utf-8"))
    except _toml.TOMLDecodeError as e:
        line = getattr(e, "lineno", None)
        raise ConfigError(f"invalid TOML: {str(e).splitlines()[0]}", path=str(path), line=line) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8", path=str(path)) from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _peft_option_of_key(key: str) -> Optional[str]:
    """`r` for a key spelled like the flag --lora-r (lora_r), else None."""
    from nanoft import peft
    from nanoft.peft.registry import flag_of

    for name in peft.names():
        options = peft.get(name).options
        for f in dataclasses.fields(options):
            if flag_of(options, f, name).lstrip("-").replace("-", "_") == key:
                return f.name
    return None


def _is_instance(value: Any, kind: Any) -> bool:
    """isinstance for the annotations config fields use: Optional/Union, List/Sequence, Dict, scalars
    (an int is a valid float; a bool is not an int)."""
    if kind is Any:
        return True
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        return any(_is_instance(value, arg) for arg in args)
    if kind is type(None):
        return value is None
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and all(_is_instance(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict or kind is dict:
        return isinstance(value, dict)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind) if isinstance(kind, type) else True


def _type_name(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " (or left out)" if type(None) in args else "")
    if origin in (list, tuple, collections.abc.Sequence):
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], str(args[0]))}" if args else "a list"
    if origin is dict or kind is dict:
        return "a table {key = value}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))


def to_toml(values: Dict[str, Any]) -> str:
    """A flat TOML document (None values are omitted: TOML has no null)."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None)
