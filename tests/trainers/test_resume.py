"""A run killed with SIGKILL after its first checkpoint resumes from it and ends exactly where an unbroken run does
(MiniLLM, and TRAPO, whose buffer also holds the guided micro-groups)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.trainers.conftest import kill_when

MINILLM = ["batch_size=8", "micro_batch_size=4", "rollouts_per_round=16", "ppo_epochs=2", "rollout_batch_size=16",
           "max_new_tokens=16", "max_steps=8", "save_every=2", "eval_every=4", "eval_rollouts=4", "lr=1e-3",
           "warmup_steps=2", "pretrain_seq_len=32", "pretrain_batch_size=4"]
TRAPO = ["batch_size=8", "micro_batch_size=4", "rollouts_per_round=2", "ppo_epochs=2", "rollout_batch_size=2",
         "max_new_tokens=24", "max_prompt_tokens=64", "max_steps=8", "save_every=2", "eval_every=4", "lr=1e-3",
         "max_eval_samples=4", "eval_problems=4", "progress=false", "rollout_backend=torch"]


def _run(launcher, args: list[str]) -> None:
    process = launcher(args)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out


@pytest.fixture
def minillm_run(overrides):
    return ["-m", "harness.trainers", "minillm", *MINILLM], overrides


@pytest.fixture
def trapo_run():
    from harness import tiny_math

    paths = tiny_math.build()
    return (["-m", "harness.trainers", "trapo", *TRAPO, f"data_dir={paths.data / 'math_synth'}"],
            lambda output: [f"model={paths.policy}", f"output_dir={output}"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["minillm", "trapo"])
def test_sigkill_then_rerun_resumes_exactly(method, request, launcher, tmp_path):
    # mid-round checkpoints (4 PPO steps per round, one every 2) exercise the saved rollout buffer
    command, overrides = request.getfixturevalue(f"{method}_run")
    kill_when(launcher(command + overrides(tmp_path / "killed")), tmp_path / "killed" / "step-2" / "trainer_state.json")
    assert not (tmp_path / "killed" / "step-8").exists()

    _run(launcher, command + overrides(tmp_path / "killed"))
    _run(launcher, command + overrides(tmp_path / "straight"))

    folders = sorted(p.name for p in (tmp_path / "killed").glob("step-*"))
    assert folders == ["step-2", "step-4", "step-6", "step-8"]
    assert not list((tmp_path / "killed").glob(".tmp-*"))
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    resumed = load_file(tmp_path / "killed" / "step-8" / "model.safetensors")
    straight = load_file(tmp_path / "straight" / "step-8" / "model.safetensors")
    start = load_file(Path(overrides(tmp_path)[0].split("=", 1)[1]) / "model.safetensors")
    for name, tensor in straight.items():
        assert (resumed[name] - tensor).abs().max() < 1e-5, name
    assert any((straight[name] - start[name]).abs().max() > 1e-3 for name in start)
