"""nanoft.tasks: what to train on. Built-in GLUE, AG News and IMDB, or any labelled file.

The first stage of the data flow (file -> tasks -> data -> models -> train): `files` reads
TSV/CSV/JSONL with one-line errors; tasks turn the rows into labelled `Examples`.

    task = get_task("sst2")                    # or from_files("my.csv", text_columns="text", ...)
    train = task.load(data_dir, "train")       # Examples: texts, text_pairs, labels, lines
"""
from nanoft.tasks.custom import from_files
from nanoft.tasks.files import Table, detect_format, read_table
from nanoft.tasks.registry import available, get_task
from nanoft.tasks.splits import parse_split, stratified_split
from nanoft.tasks.task import Examples, Layout, Split, Task, resolve_data_dir

__all__ = ["Examples", "Layout", "Split", "Table", "Task", "available", "detect_format", "from_files", "get_task",
           "parse_split", "read_table", "resolve_data_dir", "stratified_split"]
