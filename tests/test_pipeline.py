"""`train_and_evaluate`: every checkpoint is evaluated, and the method's result is the one validation chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.pipeline import train_and_evaluate
from harness.runner import EvalConfig
from harness.trainers.checkpoint import best_checkpoint, checkpoint_step


def _fake_run(output: Path, log: list[dict]) -> None:
    """Complete checkpoint folders for every step of `log`, and the log itself."""
    output.mkdir(parents=True, exist_ok=True)
    for record in log:
        folder = output / f"step-{record['step']}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"step": record["step"]}))
    (output / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))


def test_checkpoint_choice_reads_the_validation_metric_in_its_direction(tmp_path):
    _fake_run(tmp_path, [{"step": 100, "valid_rougeL": 20.0, "valid_loss": 1.0},
                         {"step": 200, "valid_rougeL": 25.0, "valid_loss": 0.8},
                         {"step": 300, "valid_rougeL": 22.0, "valid_loss": 0.7}])
    assert checkpoint_step(best_checkpoint(tmp_path, "valid_rougeL", lower_is_better=False)) == 200
    assert checkpoint_step(best_checkpoint(tmp_path, "valid_loss")) == 300


@pytest.mark.slow
def test_train_and_eval_marks_the_checkpoint_with_the_best_validation_loss(tiny, tmp_path):
    output, results = tmp_path / "run", tmp_path / "results"
    settings = EvalConfig(tasks="synth", output_dir=str(results), limit=4, seeds=(1,), progress=False)
    train_and_evaluate("sft", None, [f"model={tiny.student}", f"data_dir={Path(tiny.data) / 'synth'}",
                                     f"output_dir={output}", "progress=false", "max_steps=4", "eval_every=2",
                                     "save_every=2", "batch_size=8", "micro_batch_size=8", "max_eval_samples=8"],
                       settings, init="base")
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    best = min((r for r in log if "valid_loss" in r), key=lambda r: r["valid_loss"])["step"]
    chosen = json.loads((results / "sft__selected" / "synth" / "results.json").read_text())
    assert chosen["training"] == {"method": "sft", "step": best, "selected_by": "valid_loss", "init": "base"}
    assert chosen["wall_seconds"] > 0
    assert {p.name for p in results.iterdir()} >= {"sft__step-2", "sft__step-4", "sft__selected"}
