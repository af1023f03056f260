"""Metrics against values worked out by hand (the arithmetic is in the comments)."""
import math

import numpy as np
import pytest

from nanoft import metrics


def test_accuracy():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5  # 2 of 4 right


def test_f1_binary():
    # tp = 2 (positions 0, 3), fp = 1 (position 1), fn = 1 (position 4): F1 = 2*2 / (2*2 + 1 + 1)
    assert metrics.f1([1, 1, 0, 1, 0], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    # no positives predicted or present: 0, not NaN
    assert metrics.f1([0, 0], [0, 0]) == 0.0


def test_f1_macro():
    # class 0: tp 2 fp 0 fn 0 -> 1; class 1: tp 1 fp 1 fn 1 -> 0.5; class 2: tp 1 fp 1 fn 1 -> 0.5
    assert metrics.f1([0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 2, 0], average="macro") == pytest.approx(2 / 3)


def test_matthews_binary():
    # TP 2, FP 1, FN 1, TN 2: (2*2 - 1*1) / sqrt(3*3*3*3) = 3/9
    assert metrics.matthews_corrcoef([1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]) == pytest.approx(1 / 3)
    assert metrics.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_matthews_degenerate_is_zero_not_nan():
    value = metrics.matthews_corrcoef([1, 1, 1, 1], [1, 0, 1, 0])  # all one class predicted
    assert value == 0.0 and not math.isnan(value)
    assert metrics.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # labels all one class


def test_matthews_multiclass():
    # confusion (true x pred): (0,0) (1,1) (1,2) (2,0); n 4, correct 2, true counts [1,2,1],
    # pred counts [2,1,1]: (2*4 - 5) / sqrt((16 - 6) * (16 - 6)) = 3/10
    assert metrics.matthews_corrcoef([0, 1, 2, 0], [0, 1, 1, 2]) == pytest.approx(0.3)


def test_pearson():
    # dx = [-1.5, -.5, .5, 1.5], dy = [-3, -1, 0, 4]: 11 / sqrt(5 * 26)
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert metrics.pearson([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]) == 0.0  # constant prediction


def test_rankdata_ties_average():
    np.testing.assert_array_equal(metrics.rankdata([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])


def test_spearman_with_ties():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert metrics.spearman([1, 5, 9, 100], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)  # monotone


def test_glue_score():
    results = {
        "cola": {"matthews_corrcoef": 0.5, "accuracy": 0.99},  # accuracy is not part of CoLA's score
        "mrpc": {"f1": 0.9, "accuracy": 0.8},  # mean 0.85
        "stsb": {"pearson": 0.8, "spearman": 0.9},  # mean 0.85
        "mnli": {"accuracy": 0.8}, "mnli_mismatched": {"accuracy": 0.9},  # one MNLI score 0.85
    }
    assert metrics.glue_score(results) == pytest.approx((0.5 + 0.85 + 0.85 + 0.85) / 4)
    with pytest.raises(ValueError, match="not a GLUE task"):
        metrics.glue_score({"imdb": {"accuracy": 0.9}})
    with pytest.raises(ValueError, match="lacks f1"):
        metrics.glue_score({"mrpc": {"accuracy": 0.9}})


def test_compute_takes_logits_and_names():
    out = metrics.compute(["accuracy", "f1"], np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), [0, 1, 1])
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)  # tp 1, fp 0, fn 1
    reg = metrics.compute(["pearson"], np.array([[1.0], [2.0], [3.0]]), [2.0, 4.0, 6.0])
    assert reg["pearson"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute(["bleu"], [1], [1])
