"""`nanoft bench scratch`: the masked-LM curve read from a from-scratch run and the GLUE rows of its exported
checkpoints, checked against the run's own records and the glue runs' results.json."""
from __future__ import annotations

import json
import statistics

import pytest

from nanoft.train.pretrain import PretrainConfig, pretrain


@pytest.mark.slow
def test_bench_scratch_curve_and_glue_rows(tiny_task, glue_like_data, tmp_path):
    from nanoft.bench.scratch import main
    from nanoft.glue import glue_report

    run = tmp_path / "scratch"
    pretrain(PretrainConfig(task="sst2,cola", data_dir=str(glue_like_data), model=str(tiny_task["model"]),
                            from_scratch=True, hidden_size=16, num_layers=1, num_heads=2, max_length=16,
                            batch_size=8, max_steps=4, lr=3e-3, eval_every=2, export_every=2, log_every=1,
                            output=str(run), quiet=True, seed=0, precision="fp32"), progress=False)
    root = tmp_path / "glue"
    options = {"max_steps": 3, "eval_every": 3, "precision": "fp32", "save_best": False, "batch_size": 8,
               "max_length": 16}
    glue_report([str(run / "step-0"), str(run / "step-4")], str(root), (1, 2), str(glue_like_data), options)
    main(["--run", str(run), "--steps", "0,4", "--glue-root", str(root), "--seeds", "1,2",
          "--data-dir", str(glue_like_data), "--out-dir", str(tmp_path), "--name", "scratch"])
    out = json.loads((tmp_path / "scratch.json").read_text())

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r and "eval" not in r}
    evals = {r["step"]: r["eval"]["dev"] for r in records if "eval" in r}
    assert [c["step"] for c in out["meta"]["curve"]] == [2, 4]
    for point in out["meta"]["curve"]:
        s = point["step"]
        assert point["tokens"] == s * 8 * 16
        assert point["train_loss"] == pytest.approx((losses[s - 1] + losses[s]) / 2, abs=1e-4)
        assert point["heldout_ppl"] == pytest.approx(evals[s]["perplexity"], abs=0.006)

    rows = {r["model"]: r for r in out["rows"]}
    assert list(rows) == ["random init (step 0)", "scratch step 4"]
    for label, step in (("random init (step 0)", 0), ("scratch step 4", 4)):
        folder = root / f"{str(run / f'step-{step}').strip('/').replace('/', '_')}"
        finals = {task: [json.loads((folder / task / "glue" / f"seed{s}" / "results.json").read_text())["final"]["dev"]
                         for s in (1, 2)] for task in ("cola", "sst2")}
        sst2 = statistics.mean(100 * f["accuracy"] for f in finals["sst2"])
        cola = max(100 * f["matthews_corrcoef"] for f in finals["cola"])
        assert rows[label]["SST-2 acc"] == pytest.approx(sst2, abs=0.051)  # mean over seeds, rounded to 0.1
        assert rows[label]["CoLA MCC"] == pytest.approx(cola, abs=0.051)  # max over seeds
        assert rows[label]["avg w/o WNLI"] == pytest.approx((sst2 + cola) / 2, abs=0.051)
        assert rows[label]["tokens"] == step * 8 * 16
    # the step-4 checkpoint is the run's final model: its perplexity is the run's last held-out evaluation
    assert rows["scratch step 4"]["heldout_ppl"] == pytest.approx(evals[4]["perplexity"], abs=0.006)
    assert rows["random init (step 0)"]["heldout_ppl"] > rows["scratch step 4"]["heldout_ppl"]
    lines = (tmp_path / "scratch.md").read_text().splitlines()
    assert sum(line.startswith("| scratch step 4 ") for line in lines) == 2  # the rows table and the GLUE table


def test_bench_scratch_missing_checkpoint_is_one_line(tmp_path):
    from nanoft.bench.scratch import main
    from nanoft.errors import DataError

    with pytest.raises(DataError, match="not a pretraining run"):
        main(["--run", str(tmp_path)])
