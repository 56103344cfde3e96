"""ExAccErr, the excess accumulated error of MiniLLM's exposure-bias analysis, from per-position errors.

The per-step error at position t is KL(p || q) between the oracle p (the teacher) and the model q (the student)
next-token distributions, given a prefix. R(l) sums it over t <= l along prefixes sampled from the student;
eps(l) does the same along prefixes sampled from the teacher. ExAccErr(l) = (R(l) - eps(l)) / eps(l) x 100%.
Order of operations as the paper states it: average the per-position error over a prompt's samples, take
cumulative sums over positions, average over prompts, then take the ratio.

Samples end at different lengths. `average="generating"` (the released evaluate_exposure_bias.py, its default here)
averages the error at t over the samples still generating at t (its mask sum; 0 where none is; the script adds 1e-3
to the count, which we leave out); `average="all"` averages over every sample, one that ended before t counting 0.
Lengths l where eps(l) is 0 have no defined ratio and are left out of the curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

# Per prompt, per sample, the error at each generated position (ragged: samples end at different lengths).
PromptErrors = Sequence[Sequence[float]]


@dataclass(frozen=True)
class ExAccErr:
    lengths: list[int]  # l = 1, 2, ... where the ratio is defined
    value: list[float]  # ExAccErr(l) in percent
    student_prefix: list[float]  # R(l) for l = 1..max_length
    teacher_prefix: list[float]  # eps(l) for l = 1..max_length

    def at(self, length: int) -> float:
        """ExAccErr at `length`; a KeyError when it is not on the curve."""
        try:
            return self.value[self.lengths.index(length)]
        except ValueError:
            raise KeyError(f"ExAccErr is not defined at l={length}") from None


AVERAGES = ("generating", "all")


def mean_over_samples(samples: PromptErrors, length: int, average: str = "generating") -> list[float]:
    """Per-position error averaged over one prompt's samples: over those still generating there, or over all
    (positions past a sample's end counting 0)."""
    if len(samples) == 0:
        raise ValueError("every prompt needs at least one sample")
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}: use one of {', '.join(AVERAGES)}")
    totals, counts = [0.0] * length, [0] * length
    for errors in samples:
        for t, error in enumerate(errors[:length]):
            totals[t] += error
            counts[t] += 1
    if average == "all":
        return [total / len(samples) for total in totals]
    return [total / count if count else 0.0 for total, count in zip(totals, counts)]


def accumulated_error(prompts: Sequence[PromptErrors], length: int, average: str = "generating") -> list[float]:
    """R(l) (or eps(l)) for l = 1..length: per-prompt cumulative sums of the sample-mean error, averaged."""
    if len(prompts) == 0:
        raise ValueError("accumulated error needs at least one prompt")
    curves = [list(accumulate(mean_over_samples(samples, length, average))) for samples in prompts]
    return [sum(curve[t] for curve in curves) / len(curves) for t in range(length)]


def exacc_err(student_prefix: Sequence[PromptErrors], teacher_prefix: Sequence[PromptErrors],
              max_length: int | None = None, average: str = "generating") -> ExAccErr:
    """ExAccErr(l) for l = 1..max_length (default: the longest sample) from the per-position errors of
    student-sampled and teacher-sampled prefixes, given per prompt (the same prompts, in the same order)."""
    if len(student_prefix) != len(teacher_prefix):
        raise ValueError(f"{len(student_prefix)} prompts sampled from the student but {len(teacher_prefix)} from "
                         "the teacher; use the same prompts for both")
    if max_length is None:
        max_length = max(len(errors) for prompts in (student_prefix, teacher_prefix)
                         for samples in prompts for errors in samples)
    r = accumulated_error(student_prefix, max_length, average)
    eps = accumulated_error(teacher_prefix, max_length, average)
    defined = [t for t in range(max_length) if eps[t] > 0.0]
    return ExAccErr(
        lengths=[t + 1 for t in defined],
        value=[(r[t] - eps[t]) / eps[t] * 100.0 for t in defined],
        student_prefix=r,
        teacher_prefix=eps,
    )
