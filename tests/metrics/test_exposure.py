"""ExAccErr from per-position errors, against a hand-computed two-prompt example."""

from __future__ import annotations

import pytest

from harness.metrics.exposure import accumulated_error, exacc_err, mean_over_samples

# Prompt A: two student samples, the second ending after two tokens; prompt B: one sample.
STUDENT = [[[1.0, 1.0, 1.0], [3.0, 1.0]], [[2.0, 2.0, 2.0]]]
TEACHER = [[[1.0, 1.0, 1.0]], [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]]


def test_hand_computed_curve_over_the_samples_still_generating():
    # A: per-position mean over the samples still generating [2, 1, 1] -> cumulative [2, 3, 4]; B: [2, 4, 6];
    # R = [2, 3.5, 5]. Teacher: A [1, 2, 3]; B [1, 1, 2]; eps = [1, 1.5, 2.5].
    curve = exacc_err(STUDENT, TEACHER)
    assert curve.student_prefix == pytest.approx([2.0, 3.5, 5.0])
    assert curve.teacher_prefix == pytest.approx([1.0, 1.5, 2.5])
    assert curve.value == pytest.approx([100.0, 200.0 / 1.5, 100.0])


def test_hand_computed_curve_with_ended_samples_counting_zero():
    # A: per-position mean over both samples [2, 1, 0.5] -> cumulative [2, 3, 3.5]; B: [2, 4, 6]; R = [2, 3.5, 4.75].
    curve = exacc_err(STUDENT, TEACHER, average="all")
    assert curve.student_prefix == pytest.approx([2.0, 3.5, 4.75])
    assert curve.teacher_prefix == pytest.approx([1.0, 1.5, 2.5])
    assert curve.lengths == [1, 2, 3]
    assert curve.value == pytest.approx([100.0, 200.0 / 1.5, 90.0])
    assert curve.at(3) == pytest.approx(90.0)


def test_ended_samples_add_nothing_and_length_extends_the_curve():
    assert mean_over_samples([[3.0, 1.0], [1.0]], 4, "all") == [2.0, 0.5, 0.0, 0.0]
    assert mean_over_samples([[3.0, 1.0], [1.0]], 4) == [2.0, 1.0, 0.0, 0.0]
    assert accumulated_error([[[3.0, 1.0], [1.0]]], 4, "all") == [2.0, 2.5, 2.5, 2.5]
    assert accumulated_error([[[3.0, 1.0], [1.0]]], 4) == [2.0, 3.0, 3.0, 3.0]
    curve = exacc_err(STUDENT, TEACHER, max_length=5, average="all")
    assert curve.lengths == [1, 2, 3, 4, 5]
    assert curve.value[-1] == pytest.approx(90.0)
    with pytest.raises(ValueError, match="unknown average"):
        mean_over_samples([[1.0]], 1, "mean")


def test_ratio_is_ratio_of_means_not_mean_of_ratios():
    # Per-prompt ratios would be 0% and 100% (mean 50%); the protocol averages R and eps first: (3-2)/2.
    curve = exacc_err([[[1.0]], [[2.0]]], [[[1.0]], [[1.0]]])
    assert curve.value == pytest.approx([50.0])
    curve = exacc_err([[[1.0]], [[3.0]]], [[[1.0]], [[1.0]]])
    assert curve.value == pytest.approx([100.0])


def test_lengths_without_teacher_error_are_left_out():
    curve = exacc_err([[[1.0, 1.0]]], [[[0.0, 2.0]]])
    assert curve.lengths == [2]
    assert curve.value == pytest.approx([0.0])
    with pytest.raises(KeyError, match="l=1"):
        curve.at(1)


def test_prompt_counts_must_match():
    with pytest.raises(ValueError, match="same prompts"):
        exacc_err(STUDENT, TEACHER[:1])
    with pytest.raises(ValueError, match="at least one sample"):
        exacc_err([[]], [[[1.0]]])
