"""The built-in tasks: the 9 GLUE tasks, AG News and IMDB.

GLUE tasks read the standard GLUE release layout (`SST-2/train.tsv`, `MNLI/dev_matched.tsv`, ...,
column names as released) and the lowercase folders of ../shared/data (`sst2/train.tsv`). Label
names follow the GLUE/Hugging Face order, so files with 0/1 labels and files with label names
both load. The original CoLA files have no header (source, label, author mark, sentence); the
shared copy has `sentence,label`: both are read.

Splits that a data set lacks are carved with a fixed seed (0), stratified by label:
- AG News: `dev` = 10% of train.tsv (1,001 rows), `train` = the other 9,000, `train_full` = all
  10,001; `test` = the official 7,600.
- IMDB (one file, reviews.csv): `test` = 20% (400), `dev` = 8% (160), `train` = 72% (1,440);
  `train_full` = train + dev = the README's 1,600. Select models on dev, report test.
"""
from __future__ import annotations

import difflib
from typing import Dict, List, Optional, Tuple

from nanoft.errors import ConfigError
from nanoft.tasks.task import Layout, Split, Task


def _glue(name: str, glue_name: str, text_columns: Tuple[str, ...], label_column: str,
          label_names: Optional[List[str]], metrics: Tuple[str, ...], description: str,
          headerless: Optional[Layout] = None, mnli: bool = False) -> Task:
    if mnli:
        splits = {"train": Split(("train.tsv",)),
                  "dev_matched": Split(("dev_matched.tsv",)), "dev_mismatched": Split(("dev_mismatched.tsv",)),
                  "test_matched": Split(("test_matched.tsv",)), "test_mismatched": Split(("test_mismatched.tsv",))}
        eval_splits: Tuple[str, ...] = ("dev_matched", "dev_mismatched")
    else:
        splits = {"train": Split(("train.tsv",)), "dev": Split(("dev.tsv",)), "test": Split(("test.tsv",))}
        eval_splits = ("dev",)
    return Task(name=name, text_columns=text_columns, label_column=label_column, label_names=label_names,
                is_regression=label_names is None, metrics=metrics, main_metric=metrics[0], splits=splits,
                eval_splits=eval_splits, folders=(name, glue_name), format="tsv", headerless=headerless,
                description=description)


def _builtin() -> Dict[str, Task]:
    tasks = [
        _glue("cola", "CoLA", ("sentence",), "label", ["unacceptable", "acceptable"],
              ("matthews_corrcoef", "accuracy"), "GLUE CoLA: is the sentence grammatical?",
              headerless=Layout(text_columns=(3,), label_column=1, width=4)),
        _glue("sst2", "SST-2", ("sentence",), "label", ["negative", "positive"], ("accuracy",),
              "GLUE SST-2: movie review phrase sentiment"),
        _glue("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ["not_equivalent", "equivalent"],
              ("f1", "accuracy"), "GLUE MRPC: are the two sentences paraphrases?"),
        _glue("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"),
              "GLUE STS-B: similarity of two sentences, 0..5 (regression)"),
        _glue("qqp", "QQP", ("question1", "question2"), "is_duplicate", ["not_duplicate", "duplicate"],
              ("f1", "accuracy"), "GLUE QQP: are the two Quora questions duplicates?"),
        _glue("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ["entailment", "neutral", "contradiction"],
              ("accuracy",), "GLUE MNLI: entailment, neutral or contradiction (matched + mismatched dev)",
              mnli=True),
        _glue("qnli", "QNLI", ("question", "sentence"), "label", ["entailment", "not_entailment"], ("accuracy",),
              "GLUE QNLI: does the sentence answer the question?"),
        _glue("rte", "RTE", ("sentence1", "sentence2"), "label", ["entailment", "not_entailment"], ("accuracy",),
              "GLUE RTE: does the first sentence entail the second?"),
        _glue("wnli", "WNLI", ("sentence1", "sentence2"), "label", ["not_entailment", "entailment"], ("accuracy",),
              "GLUE WNLI: pronoun resolution as entailment"),
        Task(name="agnews", text_columns=("text",), label_column="label",
             label_names=["World", "Sports", "Business", "Sci/Tech"], is_regression=False,
             metrics=("accuracy", "f1_macro"), main_metric="accuracy",
             splits={"train": Split(("train.tsv",), parts=(0,), fractions=(0.9, 0.1)),
                     "dev": Split(("train.tsv",), parts=(1,), fractions=(0.9, 0.1)),
                     "train_full": Split(("train.tsv",)),
                     "test": Split(("test.tsv",))},
             folders=("agnews", "ag_news", "AG_News"), format="tsv",
             description="AG News: news topic (dev = seeded stratified 10% of train)"),
        Task(name="imdb", text_columns=("review",), label_column="sentiment",
             label_names=["negative", "positive"], is_regression=False,
             metrics=("accuracy", "f1"), main_metric="accuracy",
             splits={"train": Split(("reviews.csv",), parts=(0,), fractions=(0.72, 0.08, 0.2)),
                     "dev": Split(("reviews.csv",), parts=(1,), fractions=(0.72, 0.08, 0.2)),
                     "test": Split(("reviews.csv",), parts=(2,), fractions=(0.72, 0.08, 0.2)),
                     "train_full": Split(("reviews.csv",), parts=(0, 1), fractions=(0.72, 0.08, 0.2))},
             folders=("imdb", "IMDB"), format="csv",
             description="IMDB reviews: sentiment (seeded stratified 72/8/20 split of reviews.csv)"),
    ]
    return {t.name: t for t in tasks}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def available() -> List[str]:
    """Names of the built-in tasks."""
    return list(_builtin())


def get_task(name: str) -> Task:
    """A fresh built-in task by name (case, '-' and '_' ignored: 'SST-2' == 'sst2')."""
    tasks = _builtin()
    key = _normalise(name)
    if key in tasks:
        return tasks[key]
    near = difflib.get_close_matches(key, list(tasks), n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(tasks)}",
                      fix=f"{hint}or train on your own file with --train-file")
