"""Two CPU processes (torchrun, gloo) train like one process with the same global batch."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

# one sequence per forward pass, so both layouts average the same per-sequence losses
SETTINGS = ["batch_size=4", "micro_batch_size=1", "max_steps=3", "lr=1e-3", "max_length=96", "max_eval_samples=4"]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(synth, overrides, launcher, tmp_path):
    args = ["-m", "harness.trainers", "kd", *SETTINGS]
    two = launcher(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", *args,
                  *overrides(tmp_path / "two")], env_extra={"ACCELERATE_USE_CPU": "1"})
    out, _ = two.communicate(timeout=300)
    assert two.returncode == 0, out
    one = launcher([*args, *overrides(tmp_path / "one")])
    out_one, _ = one.communicate(timeout=300)
    assert one.returncode == 0, out_one
    two_weights = load_file(tmp_path / "two" / "step-3" / "model.safetensors")
    one_weights = load_file(tmp_path / "one" / "step-3" / "model.safetensors")
    for name, tensor in one_weights.items():
        assert (two_weights[name] - tensor).abs().max() < 1e-4, name
    assert len(list((tmp_path / "two" / "step-3" / "training_state").glob("random_states_*"))) == 2
