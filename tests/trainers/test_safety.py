"""A run's folder is safe: resumed state never runs code, a resumed run keeps its settings, a non-finite loss stops
the run with its checkpoints intact, and a wrong output folder or teacher is refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from harness.errors import HarnessError
from harness.trainers import train
from tests.conftest import PLANTED, Planted, broken_checkpoint

SHORT = ["batch_size=8", "micro_batch_size=8", "max_steps=2", "save_every=1", "max_length=64", "lr=1e-3"]


@pytest.fixture(scope="module")
def finished(synth, tmp_path_factory):
    """A two-step SFT run with a checkpoint per step, copied by each test that damages it."""
    from tests.trainers.conftest import base_overrides

    output = tmp_path_factory.mktemp("sft") / "run"
    train("sft", None, base_overrides(synth, output) + SHORT)
    return output


def _copy(finished, tmp_path):
    import shutil

    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def _rerun(synth, output, *changes):
    from tests.trainers.conftest import base_overrides

    return train("sft", None, base_overrides(synth, output) + SHORT + list(changes))


@pytest.mark.parametrize("name", ["method_0.pt", "random_states_0.pkl", "optimizer.bin"])
def test_a_planted_pickle_in_training_state_never_runs(name, finished, synth, tmp_path):
    output = _copy(finished, tmp_path)
    marker = tmp_path / PLANTED
    torch.save({"state": Planted(marker)}, output / "step-2" / "training_state" / name)
    with pytest.raises(HarnessError, match="safe loading refuses"):
        _rerun(synth, output, "max_steps=3")
    assert not marker.exists()


def test_resuming_with_a_changed_setting_names_it_and_writes_nothing(finished, synth, tmp_path):
    output = _copy(finished, tmp_path)
    before = {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()}
    with pytest.raises(HarnessError, match=r"lr=0\.001, not 0\.0002"):
        _rerun(synth, output, "lr=2e-4", "max_steps=3")
    with pytest.raises(HarnessError, match="model="):
        _rerun(synth, output, f"model={synth.teacher}", "max_steps=3")
    assert {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()} == before


def test_a_setting_that_may_change_on_resume_is_accepted(finished, synth, tmp_path):
    output = _copy(finished, tmp_path)
    paths = _rerun(synth, output, "max_steps=3", "eval_every=3", "progress=true")
    assert [p.name for p in paths] == ["step-1", "step-2", "step-3"]


@pytest.mark.parametrize("where, message", [("file", "is a file"), ("checkpoint", "holds a model checkpoint")])
def test_an_output_dir_that_is_no_run_folder_is_refused(where, message, synth, tmp_path):
    if where == "file":
        output = tmp_path / "out"
        output.write_text("notes")
    else:
        output = synth.student
    before = sorted(p.name for p in output.parent.iterdir()) if where == "file" else sorted(output.iterdir())
    with pytest.raises(HarnessError, match=message):
        _rerun(synth, output)
    after = sorted(p.name for p in output.parent.iterdir()) if where == "file" else sorted(output.iterdir())
    assert after == before


def test_a_non_finite_loss_stops_at_its_step_and_keeps_good_checkpoints(synth, tmp_path):
    output = tmp_path / "run"
    with pytest.raises(HarnessError, match=r"training stopped at step (\d+)") as error:
        # the first step warms up from lr 0, so a good checkpoint exists before the weights overflow
        _rerun(synth, output, "lr=1e35", "max_steps=6", "max_grad_norm=0", "schedule=constant", "warmup_steps=3")
    stopped = int(error.value.args[0].split("step ")[1].split(":")[0])
    kept = sorted(output.glob("step-*"))
    assert stopped > 1 and [p.name for p in kept] == [f"step-{n}" for n in range(1, stopped)]
    for folder in kept:
        assert all(torch.isfinite(t).all() for t in load_file(folder / "model.safetensors").values())
    assert all(json.loads(line)["step"] < stopped for line in (output / "log.jsonl").read_text().splitlines())


def test_a_teacher_that_needs_custom_code_is_one_line(synth, tmp_path):
    from tests.trainers.conftest import base_overrides

    teacher = broken_checkpoint(synth.teacher, tmp_path / "teacher", "custom-code")
    with pytest.raises(HarnessError, match="auto_map"):
        train("kd", None, base_overrides(synth, tmp_path / "run") + SHORT + [f"teacher={teacher}"])
    assert not (teacher / PLANTED).exists()
