"""Uncertainty of scores over documents: standard errors, 95% intervals, and paired comparisons of two models.

A corpus score is a statistic of a sample of documents, so it carries sampling error. For a mean over documents
the standard error is analytic: the sample standard deviation (n - 1) over sqrt(n), as lm-eval's `mean_stderr`
computes it, with the normal interval mean +- 1.96 SE. A score that is no mean (ECE) gets a bootstrap over
documents instead: seeded, `BOOTSTRAP_ITERATIONS` resamples in-process (lm-eval defaults to 100,000 in a process
pool), the standard deviation of the resampled scores as its SE and their 2.5 and 97.5 percentiles as its interval.

Two models on the same documents are compared by the per-document differences: the mean difference, its SE and
a paired bootstrap interval, and a two-sided paired permutation p-value (each document's pair of scores swapped
with probability 1/2; p = (1 + #{|permuted mean| >= |observed mean|}) / (1 + iterations), never 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal
BOOTSTRAP_ITERATIONS = 1000
PERMUTATION_ITERATIONS = 10000


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean of `values` (0 for fewer than two)."""
    array = np.asarray(values, dtype=float)
    return float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else 0.0


def with_uncertainty(name: str, doc_values: Sequence[float], scale: float = 1.0) -> dict[str, float | list[float]]:
    """{name: mean, name_stderr, name_ci95: [low, high]} of one value per document, all times `scale`."""
    if len(doc_values) == 0:
        raise ValueError(f"{name} needs at least one document")
    mean = float(np.mean(np.asarray(doc_values, dtype=float))) * scale
    stderr = mean_stderr(doc_values) * scale
    return {name: mean, f"{name}_stderr": stderr, f"{name}_ci95": [mean - Z_95 * stderr, mean + Z_95 * stderr]}


def bootstrap_uncertainty(name: str, statistic: Callable[[np.ndarray], float], n_docs: int,
                          iterations: int = BOOTSTRAP_ITERATIONS, seed: int = 0) -> dict[str, float | list[float]]:
    """{name_stderr, name_ci95} of `statistic(document indices)` by resampling the documents with replacement."""
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(rng.integers(0, n_docs, n_docs)) for _ in range(iterations)])
    low, high = np.percentile(draws, [2.5, 97.5])
    return {f"{name}_stderr": float(draws.std(ddof=1)), f"{name}_ci95": [float(low), float(high)]}


_SIGNS = np.array([-1.0, 1.0])
_CHUNK_CELLS = 4_000_000  # resamples are drawn in blocks of at most this many numbers, so memory stays bounded


def _chunks(iterations: int, n: int) -> list[int]:
    size = max(1, _CHUNK_CELLS // n)
    return [min(size, iterations - start) for start in range(0, iterations, size)]


def format_value(value: float) -> str:
    """A score with enough digits: two decimals, or three significant digits below 1 (a fraction such as 0.475
    must not print as 0.47)."""
    short = f"{value:.3g}"
    if abs(value) >= 1 or "e" in short or len(short.partition(".")[2]) < 2:
        return f"{value:.2f}"
    return short


def is_number(value: object) -> bool:
    """A metric value as results.json holds numbers (booleans are not scores)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_value(metrics: dict, name: str) -> float | None:
    """`metrics[name]` as a float, None when it is absent or not a number."""
    value = metrics.get(name)
    return float(value) if is_number(value) else None


def format_score(metrics: dict, name: str) -> str:
    """`74.59 ± 0.41` (± one standard error over documents), with `(sd 0.30)`, the spread over seeds, if stored."""
    value, stderr, spread = (metric_value(metrics, key) for key in (name, f"{name}_stderr", f"{name}_std"))
    if value is None:
        return "n/a"
    text = format_value(value) + (f" ± {format_value(stderr)}" if stderr is not None else "")
    return text + (f" (sd {format_value(spread)})" if spread else "")


@dataclass(frozen=True)
class PairedDifference:
    """Model A minus model B on the same documents."""

    metric: str
    num_docs: int
    a: float
    b: float
    difference: float
    stderr: float
    ci95: tuple[float, float]  # paired bootstrap percentile interval of the difference
    p_value: float  # two-sided paired permutation test of "no difference"


def paired_difference(metric: str, a: Sequence[float], b: Sequence[float], seed: int = 0,
                      bootstrap_iterations: int = BOOTSTRAP_ITERATIONS,
                      permutation_iterations: int = PERMUTATION_ITERATIONS) -> PairedDifference:
    """Compare per-document scores `a` and `b` (the same documents, in the same order)."""
    a_values, b_values = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_values.shape != b_values.shape or a_values.ndim != 1 or len(a_values) == 0:
        raise ValueError(f"paired scores need the same non-empty documents, got {len(a_values)} and {len(b_values)}")
    diff = a_values - b_values
    n = len(diff)
    rng = np.random.default_rng(seed)
    resampled = np.concatenate([diff[rng.integers(0, n, (size, n))].mean(axis=1)
                                for size in _chunks(bootstrap_iterations, n)])
    low, high = np.percentile(resampled, [2.5, 97.5])
    observed = abs(diff.mean())
    extreme = sum(int((np.abs((rng.choice(_SIGNS, size=(size, n)) * diff).mean(axis=1)) >= observed - 1e-12).sum())
                  for size in _chunks(permutation_iterations, n))
    return PairedDifference(metric, n, float(a_values.mean()), float(b_values.mean()), float(diff.mean()),
                            mean_stderr(diff), (float(low), float(high)),
                            (1 + extreme) / (1 + permutation_iterations))
