"""Many adapters, one base: mixed batches row by row against each adapter run alone, no leaks between adapters,
refusals (merged weights, label counts, methods that cannot share a base), and `nanoft predict --adapter`."""
from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nanoft
from nanoft import peft
from nanoft.errors import ConfigError
from nanoft.models import EncoderModel
from nanoft.models.heads import build_head
from nanoft.peft.inject import peft_layers
from nanoft.peft.multi import MultiAdapterModel, load_adapters

# name: (method, options, label count); different methods, targets and head sizes in one model
ADAPTERS = {
    "a": ("lora", dict(r=4, targets="query,value"), 2),
    "b": ("ia3", {}, 3),
    "c": ("houlsby", dict(reduction_factor=4), 4),
    "d": ("dora", dict(r=2, targets="query,key,ffn.output"), 2),
}


def tiny_base(unpad=None) -> EncoderModel:
    torch.manual_seed(0)
    config = nanoft.ModelConfig(family="bert", vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                                intermediate_size=64, max_position_embeddings=64, unpad=unpad)
    model = EncoderModel(config, head=None).init_weights().eval()
    with torch.no_grad():  # non-zero biases, so that IA³'s scaling of a bias is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def with_head(base: EncoderModel, num_labels: int, seed: int) -> EncoderModel:
    """A copy of `base` with a fresh `num_labels` classification head (the encoder is the same)."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    model.head, model.head_kind, model.num_labels = build_head(model.config, "classification", num_labels), \
        "classification", num_labels
    return model.eval()


def trained_adapters(base: EncoderModel, directory: Path, specs=ADAPTERS):
    """{name: single-adapter model} as training would leave them (every trainable tensor moved), each saved."""
    models = {}
    for k, (name, (method, options, labels)) in enumerate(specs.items()):
        model = peft.apply(with_head(base, labels, seed=10 + k), method, **options)
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p_name, p in model.named_parameters():
                if p.requires_grad:
                    noise = torch.randn(p.shape, generator=g) * 0.2
                    p.add_(noise.abs() if p_name.endswith("ia3_scale") else noise)
        peft.save_adapter(model, directory / name)
        models[name] = model
    return models


def batch(n: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, 11), generator=g)
    lengths = torch.randint(2, 12, (n,), generator=g)
    mask = (torch.arange(11)[None, :] < lengths[:, None]).long()
    return ids * mask, mask  # pad id 0 at padding


# ------------------------------------------------------------------------------ mixed batch, row by row
@pytest.mark.parametrize("unpad", [False, True])
def test_mixed_batch_equals_each_row_alone_with_its_adapter(unpad, tmp_path):
    base = tiny_base(unpad)
    singles = trained_adapters(base, tmp_path)
    model = load_adapters(copy.deepcopy(base), {n: tmp_path / n for n in ADAPTERS})
    ids, mask = batch()
    names = ["a", "b", "c", "d", "b", "a", "c"]
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, adapter_names=names)
    assert logits.shape == (7, 4)
    for i, name in enumerate(names):
        n = int(mask[i].sum())
        # reference 1: the adapter's own model (as trained), this row alone, without padding
        with torch.no_grad():
            alone = singles[name](ids[i:i + 1, :n])[0]
        # reference 2: the adapter file loaded by the existing single-adapter path onto a fresh base
        reloaded = peft.load_adapter(with_head(base, ADAPTERS[name][2], seed=99), tmp_path / name)
        with torch.no_grad():
            loaded = reloaded(ids[i:i + 1, :n])[0]
        k = ADAPTERS[name][2]
        torch.testing.assert_close(logits[i, :k], alone, rtol=0, atol=1e-5)
        torch.testing.assert_close(logits[i, :k], loaded, rtol=0, atol=1e-5)
        assert torch.isinf(logits[i, k:]).all() and (logits[i, k:] < 0).all()  # padding past its labels
        assert torch.equal(model.row_logits(logits, names)[i], logits[i, :k])
    # the adapters really differ from the base: a row's logits depend on which adapter it is routed to
    with torch.no_grad():
        as_a = model(ids, attention_mask=mask, adapter_names="a")
        as_d = model(ids, attention_mask=mask, adapter_names="d")
    assert (as_a[:, :2] - as_d[:, :2]).abs().min() > 1e-4


MIXABLE = {"lora", "rslora", "dora", "pissa", "vera", "houlsby", "pfeiffer", "ia3"}  # as the README says


def test_every_registered_method_mixes_exactly_or_is_refused(tmp_path):
    """The built-in methods mix exactly (PiSSA keeps its residual apart, VeRA shares its matrices per adapter); a
    method registered later is covered too: exact per row, or one clear refusal."""
    assert MIXABLE <= set(peft.names())
    base = tiny_base()
    ids, mask = batch(4, seed=3)
    for method in peft.names():
        specs = {"lora": ("lora", dict(r=2), 2), method + "_": (method, {}, 3)}
        folder = tmp_path / method
        singles = trained_adapters(base, folder, specs)
        if not peft.get(method).wraps_layers:  # BitFit trains the base's own biases
            with pytest.raises(ConfigError, match="trains the base model's own tensors"):
                load_adapters(copy.deepcopy(base), {n: folder / n for n in specs})
            continue
        try:
            model = load_adapters(copy.deepcopy(base), {n: folder / n for n in specs})
        except ConfigError as e:  # allowed only for a method added later that cannot share the base
            assert method not in MIXABLE and "cannot share one base" in str(e), (method, e)
            continue
        names = ["lora", method + "_", method + "_", "lora"]
        with torch.no_grad():
            logits = model(ids, attention_mask=mask, adapter_names=names)
            for i, name in enumerate(names):
                n, k = int(mask[i].sum()), specs[name][2]
                torch.testing.assert_close(logits[i, :k], singles[name](ids[i:i + 1, :n])[0], rtol=0, atol=1e-5,
                                           msg=f"{method}, row {i}")


# ------------------------------------------------------------------------------ no leaks between adapters
def test_training_one_adapter_never_touches_another(tmp_path):
    base = tiny_base()
    trained_adapters(base, tmp_path)
    model = load_adapters(copy.deepcopy(base), {n: tmp_path / n for n in ("a", "d")})
    assert not any(p.requires_grad for p in model.parameters())  # loaded frozen
    ids, mask = batch(6, seed=1)
    names = ["a", "d", "a", "d", "d", "a"]
    with torch.no_grad():
        before_logits = model(ids, attention_mask=mask, adapter_names=names)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}

    model.set_trainable("d").train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".d." in n or n.startswith("heads.d.") for n in trainable)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    for _ in range(3):  # mixed batches: the rows of `a` are in the loss too, yet `a` must not move
        loss = F.cross_entropy(model(ids, attention_mask=mask, adapter_names=names), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable  # only d's tensors moved: never a's, its head, or the base
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    with torch.no_grad():
        after_logits = model(ids, attention_mask=mask, adapter_names=names)
    rows_a = [i for i, n in enumerate(names) if n == "a"]
    assert torch.equal(after_logits[rows_a], before_logits[rows_a])
    assert not torch.equal(after_logits, before_logits)

    # the routing is gone after each call: the base alone is the plain encoder again
    assert all(layer.route is None for layer in peft_layers(model.base).values())
    with torch.no_grad():
        torch.testing.assert_close(model.base(ids, mask), base(ids, mask), rtol=0, atol=1e-6)
    model.set_trainable(["a"])
    now = {n for n, p in model.named_parameters() if p.requires_grad}
    assert now and all(".a." in n or n.startswith("heads.a.") for n in now)


# ------------------------------------------------------------------------------ refusals
def test_merged_weights_are_refused_in_mixed_mode(tmp_path):
    base = tiny_base()
    trained_adapters(base, tmp_path)
    model = load_adapters(copy.deepcopy(base), {n: tmp_path / n for n in ("a", "b")})
    ids, mask = batch(2)
    peft.set_adapter(model.base, "a")
    peft.merge(model.base)
    with pytest.raises(ConfigError, match="'a' is merged into the base weights.*unmerge"):
        model(ids, attention_mask=mask, adapter_names=["a", "b"])
    peft.unmerge(model.base)
    with torch.no_grad():
        model(ids, attention_mask=mask, adapter_names=["a", "b"])  # fine again


def test_label_count_and_bad_names_are_clear_errors(tmp_path):
    base = tiny_base()
    trained_adapters(base, tmp_path)
    model = load_adapters(copy.deepcopy(base), {"a": tmp_path / "a"})
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"adapter 'b' has a 3-label head but its data has 2 labels \(neg, pos\)"):
        model.load_adapter("b", tmp_path / "b", label_names=["neg", "pos"])
    assert model.adapter_names == ["a"] and list(model.state_dict()) == list(state)  # nothing half-added
    model.load_adapter("b", tmp_path / "b", label_names=["x", "y", "z"])
    ids, mask = batch(2)
    with pytest.raises(ConfigError, match="adapter 'zz' is not loaded.*loaded: a, b"):
        model(ids, attention_mask=mask, adapter_names=["a", "zz"])
    with pytest.raises(ConfigError, match="3 names for a batch of 2"):
        model(ids, attention_mask=mask, adapter_names=["a", "b", "a"])
    with pytest.raises(ConfigError, match="already loaded"):
        model.load_adapter("a", tmp_path / "a")


@dataclass
class _RewriteOptions:
    targets: Sequence[str] = field(default=("query",), metadata={"patterns": True, "help": "Layers."})


class _Rewrite(nn.Module):
    """Like PiSSA without a stored residual: adding it changes the base weight it wraps."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        with torch.no_grad():
            base.weight.mul_(0.5)

    def forward(self, x, base):
        return base(x) * self.gain


def test_a_method_that_rewrites_the_base_is_refused_and_the_base_restored(tmp_path):
    peft.register("rewrite_test", _RewriteOptions, lambda base, o, name: _Rewrite(base), mergeable=False)
    try:
        base = tiny_base()
        trained_adapters(base, tmp_path, {"r": ("rewrite_test", {}, 2)})
        model = MultiAdapterModel(copy.deepcopy(base))
        with pytest.raises(ConfigError, match="rewrites the base weights"):
            model.load_adapter("r", tmp_path / "r")
        assert model.adapter_names == [] and not peft_layers(model.base)
        for (n, p), q in zip(model.base.named_parameters(), base.parameters()):
            assert torch.equal(p, q), n
    finally:
        peft.unregister("rewrite_test")


# ------------------------------------------------------------------------------ nanoft predict --adapter
def _three_label_task(directory: Path) -> None:
    import random

    rng = random.Random(1)
    cues = {"sports": ["good", "great"], "world": ["bad", "awful"], "tech": ["fine", "poor"]}
    fillers = ["the", "movie", "was", "plot", "acting", "very", "film", "story"]
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 48), ("dev", 12)):
        rows = []
        for i in range(n):
            label = list(cues)[i % 3]
            words = [rng.choice(fillers) for _ in range(rng.randint(2, 8))] + [rng.choice(cues[label])]
            rows.append(f"{' '.join(words)}\t{label}")
        (directory / f"{split}.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")


def _run_cli(args, capsys):
    """`nanoft ARGS` in this process, as the console script runs it: (exit code, stdout, stderr)."""
    from nanoft.cli import main

    old = sys.argv
    sys.argv = ["nanoft", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_cli_routes_each_row_to_its_adapter(tiny_config, tiny_task, tmp_path, capsys):
    from nanoft.commands import predict_file
    from nanoft.train import Trainer

    three = tmp_path / "three"
    _three_label_task(three)
    runs = {"senti": tmp_path / "senti", "topic": tmp_path / "topic"}
    Trainer(tiny_config(peft="lora", peft_options={"r": 4}, max_steps=3, output=str(runs["senti"]))).fit()
    Trainer(tiny_config(peft="ia3", max_steps=3, lr=5e-2, output=str(runs["topic"]),
                        train_file=str(three / "train.tsv"), dev_file=str(three / "dev.tsv"))).fit()
    label_sets = {name: json.loads((run / "task.json").read_text())["label_names"] for name, run in runs.items()}
    assert len(label_sets["senti"]) == 2 and sorted(label_sets["topic"]) == ["sports", "tech", "world"]

    texts = ["the movie was good", "a film so awful", "plot was fine very", "not really poor",
             "great acting", "the story", "bad bad film", "quite good plot"]
    names = ["senti", "topic", "topic", "senti", "topic", "senti", "senti", "topic"]
    (tmp_path / "in.tsv").write_text("task\ttext\n" + "".join(f"{n}\t{t}\n" for n, t in zip(names, texts)),
                                     encoding="utf-8")
    base = tiny_task["model"]
    code, out, err = _run_cli(["predict", base, "--adapter", f"senti={runs['senti']}", "--adapter",
                               f"topic={runs['topic']}", "--input", tmp_path / "in.tsv", "--adapter-column", "task",
                               "--output", tmp_path / "out.jsonl"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in rows] == list(range(8)) and [r["text"] for r in rows] == texts
    assert [r["line"] for r in rows] == list(range(2, 10))  # line 1: the header
    assert [r["adapter"] for r in rows] == names
    for name, run in runs.items():
        # the independent reference: each run's own (merged) model through the single-model predict path
        (tmp_path / "only.tsv").write_text("text\n" + "".join(t + "\n" for t, n in zip(texts, names) if n == name),
                                           encoding="utf-8")
        predict_file(str(run), str(tmp_path / "only.tsv"), str(tmp_path / "only.jsonl"), [], False, 4, None)
        alone = [json.loads(line) for line in (tmp_path / "only.jsonl").read_text(encoding="utf-8").splitlines()]
        mine = [r for r in rows if r["adapter"] == name]
        assert len(mine) == len(alone)
        for got, want in zip(mine, alone):
            assert got["label"] in label_sets[name] and got["label"] == want["label"]
            probs = {k: v for k, v in got.items() if k.startswith("p_")}
            assert set(probs) == {f"p_{label}" for label in label_sets[name]}  # its own labels only
            for k, v in probs.items():
                assert abs(v - want[k]) <= 2e-6

    # a TSV table: the union of both label sets as columns, each row filling its own adapter's
    code, out, err = _run_cli(["predict", base, "--adapter", f"senti={runs['senti']}", "--adapter",
                               f"topic={runs['topic']}", "--input", tmp_path / "in.tsv", "--adapter-column", "task"],
                              capsys)
    assert code == 0, err
    header, *lines = out.splitlines()
    columns = header.split("\t")
    assert columns[:5] == ["index", "line", "adapter", "label", "label_id"] and columns[-1] == "text"
    for line, row in zip(lines, rows):
        cells = dict(zip(columns, line.split("\t")))
        assert cells["label"] == row["label"]
        assert all(cells[c] == "" for c in columns if c.startswith("p_") and c not in row)

    # user errors: one line on stderr, non-zero exit
    (tmp_path / "bad.tsv").write_text("task\ttext\nsenti\tgood\nsports\tthe plot\n", encoding="utf-8")
    # a run whose task has another label count than its adapter's head (task.json edited in a copy)
    shutil.copytree(runs["senti"], tmp_path / "senti3")
    info = json.loads((tmp_path / "senti3" / "task.json").read_text())
    (tmp_path / "senti3" / "task.json").write_text(json.dumps({**info, "label_names": ["neg", "pos", "mixed"]}))
    for args, message in (
            (["--adapter-column", "task", "--input", tmp_path / "bad.tsv"],
             "bad.tsv:3: adapter 'sports' (column 'task') was not loaded; loaded: senti, topic"),
            (["--adapter-column", "domain", "--input", tmp_path / "in.tsv"],
             "no adapter column 'domain'; columns found: 'task', 'text'"),
            (["--input", tmp_path / "in.tsv"], "2 adapters: which column names each row's adapter?"),
            (["--adapter", f"x={tmp_path / 'senti3'}", "--adapter-column", "task", "--input", tmp_path / "in.tsv"],
             "adapter 'x' has a 2-label head but its data has 3 labels (neg, pos, mixed)")):
        code, out, err = _run_cli(["predict", base, "--adapter", f"senti={runs['senti']}", "--adapter",
                                   f"topic={runs['topic']}", *args], capsys)
        assert code != 0 and len(err.strip().splitlines()) == 1 and message in err, err
    # a run's merged model as the base would add an adapter twice
    code, out, err = _run_cli(["predict", runs["senti"] / "best", "--adapter", f"senti={runs['senti']}",
                               "--input", tmp_path / "in.tsv", "--adapter-column", "task"], capsys)
    assert code != 0 and "adapter merged in" in err
    # a fully fine-tuned run as the base: said as what it is, with the way out
    full_run = tmp_path / "full-run"
    full_run.mkdir()
    (full_run / "config.toml").write_text('task = "sst2"\n')
    code, out, err = _run_cli(["predict", full_run, "--adapter", f"senti={runs['senti']}",
                               "--input", tmp_path / "in.tsv", "--adapter-column", "task"], capsys)
    assert code != 0 and "fully fine-tuned weights" in err and "drop --adapter" in err and "merged" not in err
