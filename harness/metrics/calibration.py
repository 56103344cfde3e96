"""Calibration of a classifier's confidence: reliability bins and the expected calibration error (ECE).

ECE = sum over bins b of (n_b / N) * |accuracy_b - mean confidence_b|, top-label and L1, as HELM reports it.
Two binnings: `equal_width` cuts [0, 1] into n equal intervals (the last one closed); `equal_mass` sorts the
predictions by confidence and cuts them into n runs of (almost) equal size, the first N mod n runs holding one
more. Equal-mass bins are HELM's default; `n_bins=1` gives the 1-bin ECE, |mean confidence - accuracy|. Ties in
confidence keep their input order, so equal confidences may straddle an equal-mass edge. Empty bins add nothing.
HELM warns that ECE is unreliable below about 300 predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

BINNINGS = ("equal_mass", "equal_width")


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram; `lower`/`upper` are the bin's edges (equal-width) or the smallest and
    largest confidence inside it (equal-mass)."""

    lower: float
    upper: float
    count: int
    confidence: float  # mean confidence of the predictions in the bin
    accuracy: float  # fraction of them that are correct

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(confidences: Sequence[float], correct: Sequence[bool | float], n_bins: int, binning: str) -> None:
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness flags; pair them 1:1")
    if len(confidences) == 0:  # not `not confidences`: numpy arrays have no truth value
        raise ValueError("calibration needs at least one prediction")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if binning not in BINNINGS:
        raise ValueError(f"unknown binning {binning!r}: use one of {', '.join(BINNINGS)}")
    if any(not 0.0 <= c <= 1.0 for c in confidences):
        raise ValueError("confidences must be probabilities in [0, 1]")


def _groups(confidences: Sequence[float], n_bins: int, binning: str) -> list[list[int]]:
    """Indices of the predictions in each bin, bins in increasing confidence."""
    if binning == "equal_width":
        groups: list[list[int]] = [[] for _ in range(n_bins)]
        for index, confidence in enumerate(confidences):
            groups[min(int(confidence * n_bins), n_bins - 1)].append(index)  # 1.0 belongs to the last bin
        return groups
    order = sorted(range(len(confidences)), key=confidences.__getitem__)
    size, extra = divmod(len(order), n_bins)
    groups, start = [], 0
    for b in range(n_bins):
        end = start + size + (1 if b < extra else 0)
        groups.append(order[start:end])
        start = end
    return groups


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool | float], n_bins: int = 10,
                     binning: str = "equal_mass") -> list[ReliabilityBin]:
    """The non-empty bins of a reliability diagram, in increasing confidence."""
    _check(confidences, correct, n_bins, binning)
    bins = []
    for b, group in enumerate(_groups(confidences, n_bins, binning)):
        if not group:
            continue
        values = [float(confidences[i]) for i in group]
        if binning == "equal_width":
            lower, upper = b / n_bins, (b + 1) / n_bins
        else:
            lower, upper = min(values), max(values)
        accuracy = sum(float(correct[i]) for i in group) / len(group)
        bins.append(ReliabilityBin(lower, upper, len(group), sum(values) / len(group), accuracy))
    return bins


def ece(confidences: Sequence[float], correct: Sequence[bool | float], n_bins: int = 10,
        binning: str = "equal_mass") -> float:
    """Expected calibration error in [0, 1] (top-label, L1), with `n_bins` bins of the given binning."""
    bins = reliability_bins(confidences, correct, n_bins, binning)
    total = sum(b.count for b in bins)
    return sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins)
