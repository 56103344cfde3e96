"""`harness compare`: paired differences of two stored runs, checked against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.compare import compare_runs
from harness.errors import HarnessError
from harness.metrics.stats import mean_stderr


def write_run(root: Path, model: str, task: str, main_metric: str, metrics: dict, scores: list[dict]) -> Path:
    folder = root / model / task
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"task": task, "model": model, "main_metric": main_metric,
                                                     "metrics": metrics}))
    rows = [{"doc_id": i, "references": [f"ref {i}"], "scores": s} for i, s in enumerate(scores)]
    (folder / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / model


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    b = rng.integers(0, 2, (200, 4)).astype(float)  # 200 problems, 4 samples each
    a = b.copy()
    a[:30] = 1.0  # A solves the first 30 problems on every sample
    run_a = write_run(tmp_path, "a", "gsm8k", "pass@1", {"pass@1": 100 * a.mean(), "maj@4": 50.0},
                      [{"correct": list(row)} for row in a])
    run_b = write_run(tmp_path, "b", "gsm8k", "pass@1", {"pass@1": 100 * b.mean(), "maj@4": 40.0},
                      [{"correct": list(row)} for row in b])
    return run_a, run_b, a.mean(axis=1), b.mean(axis=1)


def test_paired_difference_of_pass_at_1_from_the_samples(runs):
    run_a, run_b, a, b = runs
    (task, found), = compare_runs(run_a, run_b)
    assert task == "gsm8k" and found.metric == "pass@1" and found.num_docs == 200
    assert found.difference == pytest.approx(100 * (a - b).mean())
    assert found.stderr == pytest.approx(100 * mean_stderr(a - b))
    assert found.ci95[0] > 0 and found.p_value < 0.01
    assert compare_runs(run_a, run_b) == compare_runs(run_a, run_b)  # seeded


def test_cli_prints_the_comparison(runs, capsys):
    run_a, run_b, a, b = runs
    assert main(["compare", str(run_a), str(run_b)]) == 0
    out = capsys.readouterr().out
    assert "gsm8k" in out and "pass@1" in out and f"{100 * (a - b).mean():.2f}" in out and "permutation" in out


def test_metrics_that_are_no_mean_and_unpaired_documents_are_refused(runs, tmp_path, capsys):
    run_a, run_b, _, _ = runs
    with pytest.raises(HarnessError, match="not a mean of per-document scores"):
        compare_runs(run_a, run_b, metric="maj@4")
    other = write_run(tmp_path, "c", "gsm8k", "pass@1", {"pass@1": 100.0}, [{"correct": [1.0]}] * 10)
    assert main(["compare", str(run_a), str(other)]) == 2
    assert "different documents" in capsys.readouterr().err
    with pytest.raises(HarnessError, match="not in both runs"):
        compare_runs(run_a, run_b, tasks=["dolly"])
