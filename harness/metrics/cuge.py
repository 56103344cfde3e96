"""The CUGE score: raw dataset scores normalised by the mT5-small baseline and averaged up the hierarchy
dataset -> task -> capability -> overall (Yao et al. 2021, "CUGE: A Chinese Language Understanding and Generation
Evaluation Benchmark", section on multi-level scoring).

Two ways to combine, both x100 so the baseline scores 100:

- `mean_of_ratios` (default, the method the report describes): each dataset's raw score divided by the
  baseline's, then plain means at each level;
- `ratio_of_sums`: at each level the sum of raw scores divided by the sum of the baseline's scores over the same
  datasets; the index values published in the report's lite-board table match this variant.

A board that lacks some datasets is scored over what it has and marked `partial`: missing datasets are never
counted as zeros, and a capability with no dataset present is left out of the overall mean.

Baselines: the report's Table 2 gives the mT5-small lite-board scores; its full-board baselines are given per
dataset on the leaderboard site. Neither table could be read where this module was written, so
`MT5_SMALL_BASELINES` holds none yet and every call needs `baselines=` until the values are filled in from the
report (each entry with its metric, as the report prints it).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from harness.errors import HarnessError

# dataset -> (task, capability), the report's hierarchy for the datasets the harness knows. Lite board: one dataset
# per capability. ChID, CMRC 2018 and OCNLI sit where the full board puts reading comprehension and inference.
HIERARCHY: dict[str, tuple[str, str]] = {
    "ccpm": ("classical_poetry_matching", "language_understanding_word_sentence"),
    "ocnli": ("natural_language_inference", "language_understanding_word_sentence"),
    "c3": ("reading_comprehension", "language_understanding_discourse"),
    "chid": ("reading_comprehension", "language_understanding_discourse"),
    "cmrc2018": ("reading_comprehension", "language_understanding_discourse"),
    "sogou_log": ("document_retrieval", "information_acquisition"),
    "lcsts": ("summarisation", "language_generation"),
    "kdconv": ("knowledge_grounded_dialogue", "conversational_interaction"),
    "wmt20_enzh": ("machine_translation", "multilingual"),
    "math23k": ("math_word_problems", "mathematical_reasoning"),
}
LITE_BOARD = ("ccpm", "c3", "sogou_log", "lcsts", "kdconv", "wmt20_enzh", "math23k")
# The mT5-small baseline's raw score per dataset (CUGE report, Table 2 and the leaderboard); see the module note.
MT5_SMALL_BASELINES: dict[str, float] = {}
METHODS = ("mean_of_ratios", "ratio_of_sums")


@dataclass(frozen=True)
class CugeScore:
    """The index and its levels (x100, the baseline = 100), and which datasets of the board were absent."""

    index: float
    capabilities: dict[str, float]
    tasks: dict[str, float]
    missing: tuple[str, ...] = field(default=())

    @property
    def partial(self) -> bool:
        return bool(self.missing)


def _combine(raw: dict[str, float], base: dict[str, float], names: list[str], method: str) -> float:
    if method == "ratio_of_sums":
        return 100.0 * sum(raw[n] for n in names) / sum(base[n] for n in names)
    return 100.0 * statistics.fmean(raw[n] / base[n] for n in names)


def cuge_scores(raw: dict[str, float], method: str = "mean_of_ratios", baselines: dict[str, float] | None = None,
                board: tuple[str, ...] | None = None) -> CugeScore:
    """Every level of the CUGE score for `raw` (dataset name -> raw score, in the report's units).

    `board` names the datasets the board should have (default: those of `raw`); absent ones make it partial.
    """
    if method not in METHODS:
        raise HarnessError(f"unknown CUGE method {method!r}: use {' or '.join(METHODS)}")
    unknown = sorted(set(raw) - set(HIERARCHY))
    if unknown:
        raise HarnessError(f"{unknown[0]!r} is not a CUGE dataset: use one of {', '.join(sorted(HIERARCHY))}")
    if not raw:
        raise HarnessError("no CUGE dataset scores given: pass at least one dataset's raw score")
    base = MT5_SMALL_BASELINES if baselines is None else baselines
    lacking = sorted(name for name in raw if not base.get(name))
    if lacking:
        raise HarnessError(f"no mT5-small baseline for {lacking[0]!r}: pass baselines={{{lacking[0]!r}: SCORE}} "
                           "with the CUGE report's value")
    tasks: dict[str, list[str]] = {}
    capabilities: dict[str, list[str]] = {}
    for name in raw:
        task, capability = HIERARCHY[name]
        tasks.setdefault(task, []).append(name)
        capabilities.setdefault(capability, []).append(name)
    task_scores = {task: _combine(raw, base, names, method) for task, names in tasks.items()}
    if method == "ratio_of_sums":
        capability_scores = {c: _combine(raw, base, names, method) for c, names in capabilities.items()}
        index = _combine(raw, base, list(raw), method)
    else:  # plain means of the level below
        capability_scores = {c: statistics.fmean(task_scores[t] for t in dict.fromkeys(HIERARCHY[n][0] for n in names))
                             for c, names in capabilities.items()}
        index = statistics.fmean(capability_scores.values())
    missing = tuple(name for name in (board or ()) if name not in raw)
    return CugeScore(index, capability_scores, task_scores, missing)


def cuge_index(raw: dict[str, float], method: str = "mean_of_ratios",
               baselines: dict[str, float] | None = None) -> float:
    """The overall CUGE index of `raw` (x100; the mT5-small baseline scores 100). See `cuge_scores`."""
    return cuge_scores(raw, method, baselines).index
