"""The CUGE index on a board worked by hand: both combination methods, partial boards, bad input."""

from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.metrics import cuge_index
from harness.metrics.cuge import LITE_BOARD, cuge_scores

BASELINES = {"ccpm": 80.0, "c3": 40.0, "chid": 50.0, "math23k": 10.0}
RAW = {"ccpm": 90.0, "c3": 60.0, "chid": 50.0, "math23k": 20.0}


def test_mean_of_ratios_averages_dataset_task_capability():
    scores = cuge_scores(RAW, baselines=BASELINES)
    # ratios x100: ccpm 112.5, c3 150, chid 100, math23k 200; C3 and ChID share the reading-comprehension task
    assert scores.tasks["reading_comprehension"] == pytest.approx(125.0)
    assert scores.capabilities == pytest.approx({"language_understanding_word_sentence": 112.5,
                                                 "language_understanding_discourse": 125.0,
                                                 "mathematical_reasoning": 200.0})
    assert scores.index == pytest.approx((112.5 + 125.0 + 200.0) / 3)
    assert cuge_index(RAW, baselines=BASELINES) == scores.index


def test_ratio_of_sums_divides_summed_raw_by_summed_baseline():
    scores = cuge_scores(RAW, "ratio_of_sums", BASELINES)
    assert scores.index == pytest.approx(100 * 220 / 180)
    assert scores.capabilities["language_understanding_discourse"] == pytest.approx(100 * 110 / 90)
    assert cuge_index(RAW, "ratio_of_sums", BASELINES) == scores.index


def test_baseline_scores_100_by_both_methods():
    for method in ("mean_of_ratios", "ratio_of_sums"):
        assert cuge_index(BASELINES, method, BASELINES) == pytest.approx(100.0)


def test_partial_board_is_marked_and_never_zero_padded():
    lite = {name: RAW[name] for name in ("ccpm", "c3", "math23k")}
    scores = cuge_scores(lite, baselines=BASELINES, board=LITE_BOARD)
    assert scores.partial
    assert scores.missing == ("sogou_log", "lcsts", "kdconv", "wmt20_enzh")
    assert scores.index == pytest.approx((112.5 + 150.0 + 200.0) / 3)  # three capabilities, not seven
    assert not cuge_scores(lite, baselines=BASELINES).partial


def test_bad_input_is_one_clear_error():
    with pytest.raises(HarnessError, match="not a CUGE dataset"):
        cuge_index({"mnli": 1.0}, baselines=BASELINES)
    with pytest.raises(HarnessError, match="unknown CUGE method"):
        cuge_index(RAW, "median", BASELINES)
    with pytest.raises(HarnessError, match="no mT5-small baseline for 'ocnli'"):
        cuge_index({"ocnli": 50.0}, baselines=BASELINES)
