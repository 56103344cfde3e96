"""`harness compare RUN_A RUN_B`: paired differences of two models on the same documents.

A run is a results folder of one model (`runs/<model>`, one subfolder per task). For every task both runs hold,
the per-document scores come from samples.jsonl: the metric's own score (`rougeL`, `acc`, `exact_match`) or, for
math's `pass@1`/`avg@k`, the per-sample `correct`, each averaged over the document's seeds or samples. That these
per-document values average to the stored corpus score (in percent or as a fraction) is checked, so a metric that
is no mean of per-document scores (ECE, maj@k, pass@k for k > 1) is refused rather than compared wrongly. The
statistics (paired bootstrap interval, paired permutation p-value) are `harness.metrics.stats.paired_difference`.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.metrics.stats import PairedDifference, format_value, paired_difference

_PER_SAMPLE_CORRECT = ("pass@1", "avg@")  # math metrics that are the mean of the per-sample `correct` score


@dataclass(frozen=True)
class TaskRun:
    result: dict[str, Any]
    samples: list[dict[str, Any]]


def read_run(folder: Path) -> dict[str, TaskRun]:
    """Every finished task of one model's results folder, by task name."""
    if not folder.is_dir():
        raise HarnessError(f"{folder} is not a results folder: pass runs/<model> as written by `harness eval`")
    found = {}
    for path in sorted(folder.glob("*/results.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        samples_path = path.parent / "samples.jsonl"
        if not samples_path.is_file():
            continue
        samples = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        found[result["task"]] = TaskRun(result, samples)
    if not found:
        raise HarnessError(f"no results.json with samples.jsonl under {folder}: run `harness eval` into it first")
    return found


def doc_values(run: TaskRun, metric: str) -> list[float]:
    """One value of `metric` per document, on the scale of the stored corpus score."""
    stored = run.result["metrics"].get(metric)
    if not isinstance(stored, int | float):
        raise HarnessError(f"{run.result['task']} has no metric {metric!r}: pick one of "
                           f"{', '.join(sorted(k for k, v in run.result['metrics'].items() if isinstance(v, float)))}")
    names = [metric] + (["correct"] if metric.startswith(_PER_SAMPLE_CORRECT) else [])
    for name in names:
        if not all(name in sample["scores"] and sample["scores"][name] for sample in run.samples):
            continue
        values = [statistics.fmean(sample["scores"][name]) for sample in run.samples]
        for scale in (100.0, 1.0):
            if math.isclose(scale * statistics.fmean(values), stored, rel_tol=1e-6, abs_tol=1e-9):
                return [scale * value for value in values]
    raise HarnessError(f"{metric} of {run.result['task']} is not a mean of per-document scores in samples.jsonl, "
                       "so it has no paired comparison: pass --metric with a mean metric (e.g. acc)")


def _same_documents(a: TaskRun, b: TaskRun, task: str) -> None:
    key_a = [(s["doc_id"], s.get("references")) for s in a.samples]
    key_b = [(s["doc_id"], s.get("references")) for s in b.samples]
    if key_a != key_b:
        raise HarnessError(f"{task}: the two runs scored different documents ({len(key_a)} and {len(key_b)}; "
                           "same --limit and data needed) so they cannot be paired")


def compare_runs(run_a: Path, run_b: Path, tasks: list[str] | None = None, metric: str | None = None,
                 seed: int = 0) -> list[tuple[str, PairedDifference]]:
    """(task, A minus B) for every task in both runs (or the given ones), on each task's main metric by default."""
    a, b = read_run(run_a), read_run(run_b)
    shared = [task for task in a if task in b]
    if tasks:
        missing = [task for task in tasks if task not in shared]
        if missing:
            raise HarnessError(f"task {missing[0]} is not in both runs; both hold: {', '.join(shared) or 'none'}")
        shared = tasks
    if not shared:
        raise HarnessError(f"{run_a} and {run_b} share no task: evaluate both on the same tasks first")
    found = []
    for task in shared:
        _same_documents(a[task], b[task], task)
        name = metric or a[task].result["main_metric"]
        found.append((task, paired_difference(name, doc_values(a[task], name), doc_values(b[task], name), seed=seed)))
    return found


def format_comparison(name_a: str, name_b: str, rows: list[tuple[str, PairedDifference]]) -> str:
    header = f"{'task':<20} {'metric':<12} {'docs':>5} {name_a[:12]:>12} {name_b[:12]:>12} {'A - B':>8} " \
             f"{'95% CI':>18} {'p':>7}"
    lines = [header]
    for task, d in rows:
        interval = f"[{format_value(d.ci95[0])}, {format_value(d.ci95[1])}]"
        lines.append(f"{task:<20} {d.metric:<12} {d.num_docs:>5} {format_value(d.a):>12} {format_value(d.b):>12} "
                     f"{format_value(d.difference):>8} {interval:>18} {d.p_value:>7.4f}")
    lines.append("A - B on the same documents; 95% CI by paired bootstrap, p by paired permutation test "
                 "(two-sided, seeded).")
    return "\n".join(lines)
