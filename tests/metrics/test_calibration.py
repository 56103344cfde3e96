"""ECE and reliability bins against a hand-computed example, with both binnings and the 1-bin variant."""

from __future__ import annotations

import pytest

from harness.metrics import ece
from harness.metrics.calibration import reliability_bins

# Hand-computed below: six predictions, four of them correct.
CONFIDENCES = [0.95, 0.85, 0.65, 0.62, 0.15, 0.05]
CORRECT = [1, 0, 1, 1, 0, 1]


@pytest.mark.parametrize(("n_bins", "binning", "expected"), [
    # equal width, 10 bins: |1-.95| + |0-.85| + 2|1-.635| + |0-.15| + |1-.05|, over 6
    (10, "equal_width", (0.05 + 0.85 + 2 * 0.365 + 0.15 + 0.95) / 6),
    # equal mass, 3 bins of two after sorting: {.05,.15} acc .5; {.62,.65} acc 1; {.85,.95} acc .5
    (3, "equal_mass", (2 * 0.4 + 2 * 0.365 + 2 * 0.4) / 6),
    # equal mass, 4 bins over 6: sizes 2, 2, 1, 1 (the first N mod n bins hold one more)
    (4, "equal_mass", (2 * 0.4 + 2 * 0.365 + 0.85 + 0.05) / 6),
    # one bin: |mean confidence - accuracy| = |0.545 - 4/6|, whatever the binning
    (1, "equal_mass", abs(3.27 / 6 - 4 / 6)),
    (1, "equal_width", abs(3.27 / 6 - 4 / 6)),
])
def test_ece_matches_hand_computation(n_bins, binning, expected):
    assert ece(CONFIDENCES, CORRECT, n_bins=n_bins, binning=binning) == pytest.approx(expected, abs=1e-12)


def test_default_is_ten_equal_mass_bins():
    # Two predictions: ten equal-mass bins give each its own bin, (|1-.62| + |0-.65|) / 2, while one
    # equal-width bin [0.6, 0.7) holds both: |0.5 - 0.635|.
    assert ece([0.62, 0.65], [1, 0]) == pytest.approx(0.515)
    assert ece([0.62, 0.65], [1, 0], binning="equal_width") == pytest.approx(0.135)


def test_equal_width_edges_and_empty_bins():
    bins = reliability_bins([0.0, 0.1, 0.55, 1.0], [0, 1, 1, 1], n_bins=10, binning="equal_width")
    assert [(b.lower, b.upper, b.count) for b in bins] == [(0.0, 0.1, 1), (0.1, 0.2, 1), (0.5, 0.6, 1),
                                                           (0.9, 1.0, 1)]  # 1.0 falls in the last, closed bin
    assert [b.accuracy for b in bins] == [0.0, 1.0, 1.0, 1.0]


def test_equal_mass_bins_follow_sorted_confidence():
    bins = reliability_bins(CONFIDENCES, CORRECT, n_bins=3, binning="equal_mass")
    assert [(b.lower, b.upper, b.count) for b in bins] == [(0.05, 0.15, 2), (0.62, 0.65, 2), (0.85, 0.95, 2)]
    assert [b.accuracy for b in bins] == [0.5, 1.0, 0.5]
    assert bins[1].confidence == pytest.approx(0.635)


def test_perfect_calibration_is_zero():
    confidences = [0.5] * 4 + [1.0] * 3
    correct = [1, 0, 1, 0, 1, 1, 1]
    assert ece(confidences, correct, binning="equal_width") == pytest.approx(0.0)


@pytest.mark.parametrize(("confidences", "correct", "kwargs", "message"), [
    ([0.5, 0.6], [1], {}, "pair them"),
    ([], [], {}, "at least one"),
    ([0.5], [1], {"n_bins": 0}, "n_bins"),
    ([0.5], [1], {"binning": "quantile"}, "unknown binning"),
    ([1.5], [1], {}, r"\[0, 1\]"),
])
def test_misuse_is_reported(confidences, correct, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ece(confidences, correct, **kwargs)
