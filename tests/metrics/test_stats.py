"""Standard errors, bootstrap intervals and paired comparisons against hand-worked values and lm-eval's own."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from harness.metrics.stats import Z_95, bootstrap_uncertainty, mean_stderr, paired_difference, with_uncertainty


def test_mean_stderr_is_lm_evals():
    from lm_eval.api.metrics import mean_stderr as lm_eval_mean_stderr

    values = [1, 0, 0, 1, 1, 1, 0, 1]
    assert mean_stderr(values) == pytest.approx(lm_eval_mean_stderr(values))
    assert mean_stderr(values) == pytest.approx(statistics.stdev(values) / math.sqrt(8))
    assert mean_stderr([1.0]) == 0.0


def test_with_uncertainty_scales_value_stderr_and_interval():
    found = with_uncertainty("acc", (1, 0, 1, 1), scale=100.0)
    stderr = 100 * statistics.stdev([1, 0, 1, 1]) / 2
    assert found["acc"] == 75.0 and found["acc_stderr"] == pytest.approx(stderr)
    assert found["acc_ci95"] == pytest.approx([75 - Z_95 * stderr, 75 + Z_95 * stderr])


def test_bootstrap_is_seeded_and_agrees_with_the_analytic_stderr_for_a_mean():
    rng = np.random.default_rng(1)
    values = rng.normal(size=400)
    found = bootstrap_uncertainty("x", lambda docs: values[docs].mean(), len(values), iterations=2000)
    assert found == bootstrap_uncertainty("x", lambda docs: values[docs].mean(), len(values), iterations=2000)
    assert found["x_stderr"] == pytest.approx(mean_stderr(values), rel=0.1)
    low, high = found["x_ci95"]
    assert low < values.mean() < high


def test_paired_difference_detects_a_real_gain_and_not_a_null_one():
    rng = np.random.default_rng(0)
    b = rng.integers(0, 2, 500).astype(float)
    a = b.copy()
    a[rng.choice(np.flatnonzero(b == 0), 40, replace=False)] = 1.0  # A fixes 40 of B's errors, breaks none
    gain = paired_difference("acc", a, b)
    assert gain.difference == pytest.approx(40 / 500) and gain.p_value < 0.001
    assert gain.ci95[0] > 0 and gain.stderr == pytest.approx(mean_stderr(a - b))
    same = paired_difference("acc", b, rng.permutation(b))  # same accuracy, unrelated errors
    assert same.p_value > 0.05 and same.ci95[0] < 0 < same.ci95[1]


def test_permutation_p_value_matches_exact_enumeration():
    diff = np.array([1.0, 1.0, 1.0, -1.0, 1.0])
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * 5)).reshape(5, -1).T
    exact = np.mean(np.abs((signs * diff).mean(axis=1)) >= abs(diff.mean()) - 1e-12)  # 12 of 32 sign patterns
    found = paired_difference("x", diff, np.zeros(5), permutation_iterations=200_000)
    assert found.p_value == pytest.approx(exact, abs=0.01)


def test_paired_difference_needs_the_same_documents():
    with pytest.raises(ValueError, match="same non-empty documents"):
        paired_difference("acc", [1, 0], [1, 0, 1])
