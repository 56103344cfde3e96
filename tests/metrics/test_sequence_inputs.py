"""Every public metric takes numpy arrays, lists and tuples alike and gives the same number for each."""

from __future__ import annotations

import numpy as np
import pytest

from harness.metrics.calibration import ece, reliability_bins
from harness.metrics.exposure import exacc_err
from harness.metrics.passk import mean_pass_at_k, pass_at_k
from harness.metrics.text import distinct_n, exact_match, rouge_l, rouge_l_many

CONFIDENCES = [0.9, 0.8, 0.3, 0.6, 0.55, 0.99]
CORRECT = [1, 0, 0, 1, 1, 1]
KINDS = [list, tuple, np.asarray]


@pytest.mark.parametrize("kind", KINDS)
def test_ece_and_bins(kind):
    expected = ece(CONFIDENCES, CORRECT, n_bins=3)
    assert ece(kind(CONFIDENCES), kind(CORRECT), n_bins=3) == pytest.approx(expected)
    assert ece(kind(CONFIDENCES), kind([bool(c) for c in CORRECT]), n_bins=3, binning="equal_width") == \
        pytest.approx(ece(CONFIDENCES, CORRECT, n_bins=3, binning="equal_width"))
    assert len(reliability_bins(kind(CONFIDENCES), kind(CORRECT), n_bins=2)) == 2


def test_ece_hand_worked_on_arrays():
    # one bin: |mean confidence - accuracy| = |0.5 - 1.0|
    assert ece(np.array([0.4, 0.6]), np.array([True, True]), n_bins=1) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_text_metrics(kind):
    assert rouge_l("the cat sat", kind(["the cat sat down"])) == pytest.approx(2 * 0.75 / 1.75)
    assert exact_match("Paris.", kind(["paris"])) == 1.0
    assert rouge_l_many(kind(["a b"]), kind([kind(["a b"])])) == [1.0]
    assert distinct_n(kind(["a b c", "a b d"]), n=2) == (3, 4)


@pytest.mark.parametrize("kind", KINDS)
def test_pass_at_k(kind):
    n, c, k = kind([10, 3, 2])
    assert pass_at_k(n, c, k) == pytest.approx(1 - (7 * 6) / (10 * 9))
    counts = kind([kind([4, 1]), kind([4, 4])])
    assert mean_pass_at_k(counts, 1) == pytest.approx((0.25 + 1.0) / 2)


@pytest.mark.parametrize("kind", [list, tuple])
def test_exacc_err(kind):
    student = kind([kind([kind([2.0, 2.0])])])
    teacher = kind([kind([kind([1.0, 1.0])])])
    assert exacc_err(student, teacher).value == [100.0, 100.0]
    assert exacc_err(np.array(student), np.array(teacher)).value == [100.0, 100.0]
