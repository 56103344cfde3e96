"""What a task is: where its data comes from, the prompt, what is asked of the model, how a sample is scored,
and which metrics aggregate the scores.

A task is declared by a small factory function registered by name (see `registry.py`). The runner does the rest:
it builds the requests, asks the backend (through the generation cache), calls the scorer on every prediction and
hands the per-sample scores to the metrics. Tasks that need more than requests-and-scores (two models, full
next-token distributions) provide `evaluate` instead and receive an `EvalContext`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.base import SamplingSettings

Doc = dict[str, Any]
# Per document, per metric name, one score per prediction (seed or sample).
SampleScores = dict[str, list[float]]
# A metric reads the per-document records of samples.jsonl ("scores", "predictions", "references", ...).
Metric = Callable[[list[dict[str, Any]]], dict[str, float]]


@dataclass(frozen=True)
class DataSource:
    """A file inside a local data folder, or a hub dataset with the same rows.

    `fields` maps our field names to the hub dataset's when they differ; `builtin` returns the data folder of a
    data set the harness makes itself (the synthetic suite), which then needs no `--data-dir`.
    """

    local_file: str
    hub_id: str | None = None
    hub_config: str | None = None
    hub_files: str | None = None  # for hub repos of raw files: the file(s) to read, as `data_files`
    split: str = "test"
    fields: Mapping[str, str] = field(default_factory=dict)
    builtin: Callable[[], Path] | None = None
    external: bool = False  # the task reads its own data (lm-eval tasks): the runner loads no rows for it


@dataclass(frozen=True)
class ChoicePrediction:
    """What a multiple-choice request yields: the summed log-prob of each option and the chosen one."""

    logprobs: list[float]

    @property
    def chosen(self) -> int:
        return max(range(len(self.logprobs)), key=self.logprobs.__getitem__)


@dataclass(frozen=True)
class TaskResult:
    samples: list[dict[str, Any]]  # one record per document, as written to samples.jsonl
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)  # arrays for plots (curves, bins)


@dataclass
class EvalContext:
    """What a custom `evaluate` gets: the backend under test and the run's settings."""

    backend: Any
    docs: list[Doc]
    settings: Any  # the EvalConfig of the run
    teacher: Any = None  # a second backend, for tasks that compare two models


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    data: DataSource
    prompt: Callable[[Doc], str]
    references: Callable[[Doc], list[str]]
    scorer: Callable[[Doc, Any], dict[str, float]]  # (doc, prediction) -> scores of that one prediction
    metrics: Sequence[Metric]
    main_metric: str
    higher_is_better: bool = True  # of the main metric (ECE and losses are better lower); orders the leaderboard
    sampling: SamplingSettings | None = None  # generation tasks
    seeds: tuple[int, ...] = (0,)  # one generation per seed for each document
    choices: Callable[[Doc], list[str]] | None = None  # multiple-choice tasks: options scored by log-likelihood
    postprocess: Callable[[str], str] = str.strip
    reference_loss: bool = False  # also log the teacher-forced LM loss of the first reference
    evaluate: Callable[[EvalContext], TaskResult] | None = None
    needs_teacher: bool = False
    # Scoring all predictions in one call, for scorers that batch (parallel math verification); same results as
    # `scorer` on each (doc, prediction) pair, in order.
    score_many: Callable[[list[tuple[Doc, Any]]], list[dict[str, float]]] | None = None
    # Non-score fields of one prediction (the extracted answer, how it was found), kept in samples.jsonl.
    annotate: Callable[[Doc, Any], dict[str, Any]] | None = None


# ----- metrics: per-document records -> numbers ------------------------------------------------------------------


def seed_mean(name: str, scale: float = 100.0) -> Metric:
    """Corpus mean per seed, then their mean and, as `<name>_std`, the population standard deviation of the
    per-seed means (MiniLLM reports 5 seeds this way)."""

    def metric(samples: list[dict[str, Any]]) -> dict[str, float]:
        scores = [sample["scores"] for sample in samples]
        seeds = len(scores[0][name])
        per_seed = [statistics.fmean(doc[name][seed] for doc in scores) * scale for seed in range(seeds)]
        spread = statistics.pstdev(per_seed) if seeds > 1 else 0.0
        return {name: statistics.fmean(per_seed), f"{name}_std": spread}

    return metric


def sample_mean(name: str, scale: float = 1.0) -> Metric:
    """Mean over every prediction of every document."""

    def metric(samples: list[dict[str, Any]]) -> dict[str, float]:
        values = [value for sample in samples for value in sample["scores"][name]]
        return {name: statistics.fmean(values) * scale}

    return metric
