"""What a task is: where its data comes from, the prompt, what is asked of the model, how a sample is scored,
and which metrics aggregate the scores.

A task is declared by a small factory function registered by name (see `registry.py`). The runner does the rest:
it builds the requests, asks the backend (through the generation cache), calls the scorer on every prediction and
hands the per-sample scores to the metrics. Tasks that need more than requests-and-scores (two models, full
next-token distributions) provide `evaluate` instead and receive an `EvalContext`.

Few-shot tasks declare a `FewShot`: a demonstration pool (a data source like the test set's), k, how one pool row
reads as a demonstration, and a sampler keyed by the seed. The runner draws the demonstrations once per seed, shares
them across every test document of that seed, and evaluates every seed.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.base import SamplingSettings
from harness.errors import HarnessError
from harness.metrics.stats import with_uncertainty

Doc = dict[str, Any]
# Per document, per metric name, one score per prediction (seed or sample).
SampleScores = dict[str, list[float]]
# A metric reads the per-document records of samples.jsonl ("scores", "predictions", "references", ...).
Metric = Callable[[list[dict[str, Any]]], dict[str, float]]


@dataclass(frozen=True)
class DataSource:
    """A file inside a local data folder, or a hub dataset with the same rows.

    `fields` maps our field names to the hub dataset's when they differ; `builtin` returns the data folder of a
    data set the harness makes itself (the synthetic suite), which then needs no `--data-dir`. `more_files` are
    read after `local_file` and their rows appended (a pool split over several files); `reader` parses a file
    whose format `read_rows` does not know (plain-text lines, a folder of task files).
    """

    local_file: str
    more_files: tuple[str, ...] = ()
    reader: Callable[[Path], list[dict[str, Any]]] | None = None
    hub_id: str | None = None
    hub_config: str | None = None
    hub_files: str | None = None  # for hub repos of raw files: the file(s) to read, as `data_files`
    split: str = "test"
    fields: Mapping[str, str] = field(default_factory=dict)
    builtin: Callable[[], Path] | None = None
    external: bool = False  # the task reads its own data (lm-eval tasks): the runner loads no rows for it


@dataclass(frozen=True)
class ChoicePrediction:
    """What a multiple-choice request yields: the summed log-prob of each option, the chosen one, and the exact
    context the options were scored after."""

    logprobs: list[float]
    options: tuple[str, ...] = ()
    prompt: str = ""
    first_token_logprobs: tuple[float, ...] = ()  # each option's first token, when the task scores token by token

    @property
    def chosen(self) -> int:
        return max(range(len(self.logprobs)), key=self.logprobs.__getitem__)

    @property
    def text(self) -> str:
        """The chosen option without the whitespace that joins it to the context (" Positive\n" -> "Positive")."""
        return self.options[self.chosen].strip()


Sampler = Callable[[list[Doc], int, int, Callable[[Doc], Any]], list[int]]


def balanced_sample(pool: list[Doc], k: int, seed: int, label: Callable[[Doc], Any]) -> list[int]:
    """PICL's shared demonstrations (`_get_demo_ids_share`): ceil(k / #labels) rows of every label drawn with a
    generator seeded by `seed`, then put in order by a second generator. PICL seeds the order separately
    (`--seed-order`); here it is derived from the seed. Where ceil(k / #labels) * #labels exceeds k, PICL keeps
    them all; we cut the shuffled list to k, so every label is equally likely to lose a row."""
    if k == 0:
        return []
    by_label: dict[Any, list[int]] = {}
    for index, row in enumerate(pool):
        by_label.setdefault(label(row), []).append(index)
    per_label = math.ceil(k / len(by_label))
    draw, order = random.Random(seed), random.Random(f"order-{seed}")
    picked: list[int] = []
    for value in sorted(by_label, key=str):
        if len(by_label[value]) < per_label:
            raise HarnessError(f"the demonstration pool has {len(by_label[value])} rows of label {value!r}, but "
                               f"{k} balanced shots need {per_label} of each: lower --num-fewshot")
        picked += draw.sample(by_label[value], per_label)
    order.shuffle(picked)
    return picked[:k]


@dataclass(frozen=True)
class FewShot:
    """Demonstrations for a task: drawn from `pool` by `sampler(pool rows, k, seed, label)`, shown in the prompt
    as `demonstration(row)` each, one after the other, before the document's own prompt. Without a `label`,
    every row has the same one and the balanced draw is a uniform draw of k rows."""

    pool: DataSource
    k: int
    demonstration: Callable[[Doc], str]
    label: Callable[[Doc], Any] = lambda row: None
    sampler: Sampler = balanced_sample

    def draw(self, pool_rows: list[Doc], k: int, seed: int) -> list[int]:
        if k > len(pool_rows):
            raise HarnessError(f"--num-fewshot {k} is larger than the demonstration pool ({len(pool_rows)} rows of "
                               f"{self.pool.local_file}): lower --num-fewshot")
        return self.sampler(pool_rows, k, seed, self.label)


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
    cache: Any = None  # the run's generation cache (store.GenerationCache), for tasks that ask the model themselves


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
    option_tokens: bool = False  # score options token by token, for metrics that read an option's first token
    postprocess: Callable[[str], str] = str.strip
    reference_loss: bool = False  # also log the teacher-forced LM loss of the first reference
    evaluate: Callable[[EvalContext], TaskResult] | None = None
    needs_teacher: bool = False
    # Scoring all predictions in one call, for scorers that batch (parallel math verification); same results as
    # `scorer` on each (doc, prediction) pair, in order.
    score_many: Callable[[list[tuple[Doc, Any]]], list[dict[str, float]]] | None = None
    # Non-score fields of one prediction (the extracted answer, how it was found), kept in samples.jsonl.
    annotate: Callable[[Doc, Any], dict[str, Any]] | None = None
    fewshot: FewShot | None = None
    # The test documents the protocol evaluates, from the rows read (a label-balanced subset); before --limit.
    select: Callable[[list[Doc]], list[Doc]] | None = None
    # The group a document belongs to (its S-NI task), kept in samples.jsonl for per-group metrics.
    group: Callable[[Doc], str] | None = None
    # Arrays for plots and reports computed from the finished records (reliability bins).
    details: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    # The task rebuilt for the run's settings (the EvalConfig: its protocol, its length tokenizer), before planning.
    configure: Callable[[Any], Task] | None = None
    protocols: tuple[str, ...] = ()  # the named protocols (`--protocol`) the task can run under
    # The prompt as chat turns for the checkpoint's template (a system turn and a user turn), where it is not one
    # user turn holding `prompt`; `chat_template` True renders every prompt so, False never, None as --chat-template.
    messages: Callable[[Doc], list[dict[str, str]]] | None = None
    chat_template: bool | None = None
    # What the rendered prompt already wrote of the response (a template that opens `<think>`), put before each
    # completion before scoring and in samples.jsonl.
    response_prefix: Callable[[str], str] | None = None
    # Settings written beside the metrics in results.json (the protocol, the length tokenizer).
    record: Mapping[str, Any] = field(default_factory=dict)

    def fewshot_prompt(self, doc: Doc, demonstrations: Sequence[Doc]) -> str:
        """The document's prompt after its demonstrations (none for zero-shot)."""
        assert self.fewshot is not None or not demonstrations
        shown = "".join(self.fewshot.demonstration(row) for row in demonstrations) if demonstrations else ""
        return shown + self.prompt(doc)


# ----- metrics: per-document records -> numbers ------------------------------------------------------------------


def seed_mean(name: str, scale: float = 100.0) -> Metric:
    """Corpus mean per seed, then their mean and, as `<name>_std`, the population standard deviation of the
    per-seed means (MiniLLM reports 5 seeds this way); the standard error and 95% interval are over documents, of
    each document's mean across seeds."""

    def metric(samples: list[dict[str, Any]]) -> dict[str, float]:
        scores = [sample["scores"] for sample in samples]
        seeds = len(scores[0][name])
        per_seed = [statistics.fmean(doc[name][seed] for doc in scores) * scale for seed in range(seeds)]
        spread = statistics.pstdev(per_seed) if seeds > 1 else 0.0
        per_doc = [statistics.fmean(doc[name]) for doc in scores]
        return {**with_uncertainty(name, per_doc, scale), name: statistics.fmean(per_seed), f"{name}_std": spread}

    return metric


def seed_macro_f1(name: str = "macro_f1", scale: float = 100.0) -> Metric:
    """Macro-F1 of the predictions against the first reference, per seed, then mean and spread across seeds.
    A class never predicted and never gold does not count; one gold but never predicted scores F1 0."""

    def metric(samples: list[dict[str, Any]]) -> dict[str, float]:
        gold = [sample["references"][0] for sample in samples]
        per_seed = [macro_f1([sample["predictions"][seed] for sample in samples], gold) * scale
                    for seed in range(len(samples[0]["predictions"]))]
        spread = statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0
        return {name: statistics.fmean(per_seed), f"{name}_std": spread}

    return metric


def macro_f1(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in `gold` or `predicted`."""
    f1s = []
    for value in sorted(set(gold) | set(predicted)):
        hits = sum(p == g == value for p, g in zip(predicted, gold))
        denominator = sum(p == value for p in predicted) + sum(g == value for g in gold)
        f1s.append(2 * hits / denominator)
    return statistics.fmean(f1s)


def per_group(samples: list[dict[str, Any]], name: str, scale: float = 100.0) -> dict[str, float]:
    """Each group's (S-NI task's) mean score over all its predictions."""
    groups: dict[str, list[float]] = {}
    for sample in samples:
        groups.setdefault(sample["group"], []).extend(sample["scores"][name])
    return {group: statistics.fmean(values) * scale for group, values in sorted(groups.items())}


def group_mean(name: str, scale: float = 100.0) -> Metric:
    """Macro mean over groups of each group's mean score (S-NI reports the mean over tasks)."""

    def metric(samples: list[dict[str, Any]]) -> dict[str, float]:
        return {name: statistics.fmean(per_group(samples, name, scale).values())}

    return metric


def sample_mean(name: str, scale: float = 1.0) -> Metric:
    """Mean over every prediction of every document."""

    def metric(samples: list[dict[str, Any]]) -> dict[str, float]:
        values = [value for sample in samples for value in sample["scores"][name]]
        per_doc = [statistics.fmean(sample["scores"][name]) for sample in samples]
        return {**with_uncertainty(name, per_doc, scale), name: statistics.fmean(values) * scale}

    return metric
