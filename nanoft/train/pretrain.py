"""Masked-LM pretraining runs: continued from a checkpoint (domain/task-adaptive) or from scratch.

    results = pretrain(PretrainConfig(text_file="corpus.txt", max_steps=1000))

A PretrainConfig is a TrainConfig (same optimisation, run-directory and evaluation options) plus the
corpus, masking and from-scratch sizes; `nanoft pretrain --help` is generated from its fields. The run
is an ordinary Trainer run with the `MaskedLM` objective, so it writes the same run directory, resumes
bit for bit, and its `best/` is an HF-layout masked-LM checkpoint that `nanoft train --model` fine-tunes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from nanoft.data.packing import pack
from nanoft.errors import ConfigError
from nanoft.train.config import TrainConfig, _section

# Sections of `nanoft pretrain --help`, in order: the TrainConfig sections it keeps plus its own.
SECTIONS = {
    "data": "Corpus",
    "masking": "Masking",
    "model": "Model",
    "scratch": "From scratch",
    "optimization": "Optimization",
    "evaluation": "Evaluation",
    "run": "Run directory and logging",
}
# TrainConfig fields that mean nothing for pretraining (whole sections not in SECTIONS are left out too).
NOT_OPTIONS = ("train_file", "test_file", "label_column", "label_type", "no_header", "train_subset")
FAMILIES = ("bert", "roberta")

_data, _masking, _scratch = _section("data"), _section("masking"), _section("scratch")


@dataclass
class PretrainConfig(TrainConfig):
    """Every option of a pretraining run; `nanoft pretrain --help` is generated from these fields."""

    # ---- corpus (TrainConfig's task / dev_file / split / text_columns take pretraining meanings here)
    text_file: Optional[str] = _data(None, "Corpus: plain text with one document per line, or a TSV/CSV/JSONL "
                                           "file with --text-column.", metavar="FILE")
    task: Optional[str] = _data(None, "Pretrain on built-in tasks' train texts, one task or several "
                                      "comma-separated (e.g. imdb,agnews,sst2); labels ignored, pairs joined as the "
                                      "family joins them; their dev texts are held out.", metavar="TASK[,TASK...]")
    dev_file: Optional[str] = _data(None, "Held-out documents for perplexity, in --text-file's format.",
                                    metavar="FILE")
    split: Optional[str] = _data("0.05", "Without --dev-file: hold out this fraction of the documents (seeded).")
    text_columns: List[str] = _data(help="Text column of a TSV/CSV/JSONL corpus.", factory=list, flag="--text-column",
                                    multiple=True, unset="text")
    max_length: int = _data(128, "Block length: the corpus is packed into blocks of this many tokens.")
    document_mask: bool = _data(False, "Keep attention within documents inside a packed block (block-diagonal "
                                       "mask; positions restart at each document). Runs unpadded; full "
                                       "attention only.")
    # ---- masking
    mask_rate: float = _masking(0.15, "Fraction of the tokens to predict (MosaicBERT used 0.3).")
    whole_word_mask: bool = _masking(False, "Mask every piece of a word together.")
    eval_mask_seed: int = _masking(0, "Seed of the fixed evaluation mask (independent of --seed, so runs compare).")
    # ---- from scratch
    from_scratch: bool = _scratch(False, "Start from random weights; the tokenizer comes from --model unless "
                                         "--train-tokenizer.")
    train_tokenizer: Optional[int] = _scratch(None, "With --from-scratch: train a vocabulary of about this many "
                                                    "tokens on the train corpus (WordPiece for BERT, byte-level BPE "
                                                    "for RoBERTa), saved with the run; the model takes its size.",
                                              metavar="VOCAB_SIZE")
    family: str = _scratch("bert", "Layout of the new model.", choices=list(FAMILIES))
    hidden_size: int = _scratch(256, "Hidden size of the new model.")
    num_layers: int = _scratch(4, "Encoder layers of the new model.")
    num_heads: int = _scratch(4, "Attention heads of the new model (must divide the hidden size).")
    intermediate_size: Optional[int] = _scratch(None, "Feed-forward size of the new model.", unset="4 × hidden size")
    config_json: Optional[str] = _scratch(None, "Take the new model's sizes from this config.json instead.",
                                          metavar="FILE")

    def check_data(self) -> None:
        if not self.task and not self.text_file:
            raise ConfigError("no corpus given", fix="pass --text-file FILE or --task NAME")
        if self.task and self.text_file:
            raise ConfigError("both --task and --text-file given", fix="use one of them")
        if self.task:
            from nanoft.tasks import get_task

            names = [name.strip() for name in self.task.split(",")]
            if "" in names or len(set(names)) != len(names):
                raise ConfigError(f"--task {self.task!r}: give distinct task names separated by commas",
                                  fix="e.g. --task imdb,agnews,sst2")
            for name in names:
                try:
                    get_task(name)
                except ConfigError as error:  # the known tasks are listed; the way out differs from training's
                    raise ConfigError(error.message, fix="or pretrain on your own text with --text-file") from None

    def check_values(self) -> "PretrainConfig":
        super().check_values()
        if not 0 < self.mask_rate < 1:
            raise ConfigError(f"mask_rate must be in (0, 1), got {self.mask_rate}", fix="e.g. --mask-rate 0.15")
        if self.document_mask and self.attention not in (None, "full"):
            raise ConfigError(f"--document-mask needs full attention, not --attention {self.attention}",
                              fix="drop one of --attention and --document-mask")
        if self.train_tokenizer is not None:
            from nanoft.weights.vocab import check_vocab_size

            if not self.from_scratch:
                raise ConfigError("--train-tokenizer needs --from-scratch",
                                  fix="a checkpoint keeps the tokenizer it was trained with; add --from-scratch")
            if not self.config_json:
                check_vocab_size(self.family, self.train_tokenizer)
        if self.from_scratch and not self.config_json:
            for name in ("hidden_size", "num_layers", "num_heads"):
                if getattr(self, name) < 1:
                    raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"--hidden-size {self.hidden_size} is not divisible by --num-heads {self.num_heads}",
                                  fix="pick sizes where hidden % heads == 0, e.g. 256 and 4")
        return self


def new_model(config: PretrainConfig, tokenizer: Any) -> Any:
    """A randomly initialised masked-LM model of the configured sizes (seeded by --seed)."""
    from nanoft.config import ModelConfig
    from nanoft.models import EncoderModel

    if config.config_json:
        model_config = ModelConfig.from_file(config.config_json)
        model_config.max_position_embeddings = max(model_config.max_position_embeddings,
                                                   config.max_length + model_config.position_offset)
        if config.train_tokenizer:  # the vocabulary trained for this run, whatever the file says
            model_config.vocab_size, model_config.pad_token_id = tokenizer.vocab_size, tokenizer.pad_token_id
    else:
        roberta = config.family == "roberta"
        pad = tokenizer.pad_token_id
        offset = pad + 1 if roberta else 0
        model_config = ModelConfig(
            family=config.family, vocab_size=tokenizer.vocab_size, hidden_size=config.hidden_size,
            num_layers=config.num_layers, num_heads=config.num_heads,
            intermediate_size=config.intermediate_size or 4 * config.hidden_size,
            max_position_embeddings=max(512, config.max_length) + offset, type_vocab_size=1 if roberta else 2,
            pad_token_id=pad, position_offset=offset)
    for name, rate in (("hidden_dropout", config.hidden_dropout), ("attention_dropout", config.attention_dropout)):
        if rate is not None:
            setattr(model_config, name, rate)
    model_config.unpad = config.unpad
    torch.manual_seed(config.seed)
    model = EncoderModel(model_config, head="masked-lm").init_weights()
    model.encoder.gradient_checkpointing = config.gradient_checkpointing
    return model


def check_vocabulary(tokenizer: Any, model: Any) -> None:
    """Every id the tokenizer can produce must have a row in the model's embedding table."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary only "
                          f"{model.config.vocab_size}", path=str(tokenizer.source),
                          fix="use the tokenizer the model was trained with (or a config with a larger vocab_size)")


def run_tokenizer(config: PretrainConfig) -> Any:
    """The run's tokenizer: --model's, or with --train-tokenizer one trained on the train corpus (read back from
    the run's checkpoint when resuming, so a resumed run keeps its vocabulary)."""
    from nanoft.train.corpus import load_corpus
    from nanoft.train.rundir import RunDir
    from nanoft.weights import load_tokenizer
    from nanoft.weights.vocab import train_tokenizer

    if not config.train_tokenizer:
        return load_tokenizer(config.model)
    saved = RunDir(config.output).checkpoint
    if config.resume and (saved / "tokenizer.json").is_file():
        return load_tokenizer(saved)
    family = config.family
    if config.config_json:
        from nanoft.config import ModelConfig

        family = ModelConfig.from_file(config.config_json).family
    (texts, pairs), _, name = load_corpus(config)
    return train_tokenizer(list(texts) + [p for p in pairs or [] if p is not None], family, config.train_tokenizer,
                           source=f"tokenizer trained on {config.text_file or name}")


def build_pretraining(config: PretrainConfig, device: Optional[str] = None, progress: bool = True) -> Any:
    """A Trainer for masked-LM: the model (loaded or new), its tokenizer, and the MaskedLM objective."""
    from nanoft.train import build
    from nanoft.train.mlm import MaskedLM
    from nanoft.train.runtime import seed_everything
    from nanoft.train.trainer import Trainer
    from nanoft.weights import default_model_path

    config = config.validate()
    if config.model is None:
        config = config.replace(model=str(default_model_path()))
    if config.output is None:
        corpus = config.task.replace(",", "+") if config.task else Path(config.text_file).stem
        config = config.replace(output=str(Path("runs") / f"mlm-{corpus}-{'scratch' if config.from_scratch else 'cont'}"
                                                                        f"-s{config.seed}"))
    tokenizer = run_tokenizer(config)
    objective = MaskedLM(config.mask_rate, config.whole_word_mask, config.eval_mask_seed, config.document_mask)
    objective.prepare(tokenizer, config.seed)  # a tokenizer without a mask token fails here, before any work
    seed_everything(config.seed)  # a head the checkpoint lacks is initialised from the run's seed
    if config.from_scratch:
        model = new_model(config, tokenizer)
    else:
        model, _ = build.load_model_for(config, objective.head, objective.num_labels)
    check_vocabulary(tokenizer, model)
    return Trainer(config, model=model, tokenizer=tokenizer, device=device, progress=progress, objective=objective)


def pretrain(config: PretrainConfig, device: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Run masked-LM pretraining to the end; returns results.json's content."""
    return build_pretraining(config, device, progress).fit()


def pretrain_and_report(config: PretrainConfig) -> str:
    """`nanoft pretrain`: run, then one summary line per held-out split."""
    trainer = build_pretraining(config)
    results = trainer.fit()
    best = results.get("best") or {}
    lines = [f"run: {trainer.run_dir}"]
    for split, metrics in (best.get("metrics") or {}).items():
        lines.append(f"best {split} (step {best.get('step')}): loss {metrics['loss']:.4f} "
                     f"perplexity {metrics['perplexity']:.2f}")
    lines.append(f"steps {results['steps']}, {results['tokens_per_s']:.0f} tokens/s")
    return "\n".join(lines)


def evaluate_text(model_dir: Optional[str], text_file: str, max_length: int = 128, batch_size: int = 128,
                  mask_rate: float = 0.15, eval_mask_seed: int = 0, whole_word: bool = False,
                  text_column: Optional[str] = None, device: Optional[str] = None,
                  document_mask: bool = False) -> Dict[str, float]:
    """Masked-LM loss and perplexity of a checkpoint (a model directory or a run's best/) on a text file, with
    the same fixed seeded mask a pretraining run evaluates with: `nanoft eval --objective mlm`."""
    from nanoft.train.corpus import read_documents

    return evaluate_documents(model_dir, read_documents(text_file, text_column), None, max_length, batch_size,
                              mask_rate, eval_mask_seed, whole_word, device, document_mask, source=text_file)


def evaluate_documents(model_dir: Optional[str], texts: List[str], pairs: Optional[List[str]] = None,
                       max_length: int = 128, batch_size: int = 128, mask_rate: float = 0.15, eval_mask_seed: int = 0,
                       whole_word: bool = False, device: Optional[str] = None, document_mask: bool = False,
                       source: str = "corpus") -> Dict[str, float]:
    """`evaluate_text` on documents in memory (e.g. a task's held-out texts: before and after continued
    pretraining, the same blocks under the same mask). A checkpoint without a masked-LM head (a sentence
    encoder) gets one drawn from `eval_mask_seed`, so its perplexity is reproducible too."""
    from nanoft.train import distributed
    from nanoft.train.mlm import MaskedLM
    from nanoft.train.rundir import RunDir
    from nanoft.weights import load_model, load_tokenizer

    if model_dir is not None and RunDir(model_dir).is_run():
        model_dir = str(RunDir(model_dir).model_dir())
    tokenizer = load_tokenizer(model_dir)
    objective = MaskedLM(mask_rate, whole_word, eval_mask_seed, document_mask)
    objective.prepare(tokenizer, eval_mask_seed)
    with torch.random.fork_rng(devices=[]):  # a missing head's init: seeded, without touching the caller's RNG
        torch.manual_seed(eval_mask_seed)
        model = load_model(model_dir, head="masked-lm", max_length=max_length)
    check_vocabulary(tokenizer, model)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = pack(tokenizer, texts, max_length, pairs=pairs, source=source)
    return objective.evaluate(model.to(dev), data, tokenizer.pad_token_id, batch_size, torch.device(dev), "fp32",
                              distributed.DistInfo())


__all__ = ["PretrainConfig", "evaluate_text", "evaluate_documents", "build_pretraining", "pretrain", "new_model",
           "check_vocabulary"]
