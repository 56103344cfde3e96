"""Every YAML recipe in configs/ loads into its method's config class (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.config import load
from harness.errors import HarnessError
from harness.trainers import METHODS, available_methods, config_class

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if p.stem.split("_")[0] in METHODS)


def test_every_method_has_a_tiny_recipe_and_real_scale_recipes_exist():
    assert {p.stem for p in RECIPES} >= set(METHODS)
    assert any("gpt2" in p.stem for p in RECIPES) and any("qwen" in p.stem for p in RECIPES)
    assert set(METHODS) <= set(available_methods())


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_into_its_config_class(path):
    config = load(config_class(path.stem.split("_")[0]), path)
    assert config.model and config.batch_size % config.micro_batch_size == 0


def test_paper_settings_of_the_gpt2_minillm_recipe():
    config = load(config_class("minillm"), CONFIGS / "minillm_gpt2.yaml")
    assert (config.lr, config.warmup_steps, config.betas, config.weight_decay) == (5e-6, 100, (0.9, 0.95), 1e-6)
    assert (config.rollouts_per_round, config.ppo_epochs, config.batch_size, config.max_steps) == (256, 4, 64, 5000)
    assert (config.mix_alpha, config.clip_eps, config.length_normalise) == (0.2, 0.2, True)


def test_gpt2_minillm_recipe_is_the_released_code_and_the_plain_one_the_paper(capsys):
    from harness.cli import main

    assert main(["train", "minillm", "--config", str(CONFIGS / "minillm_gpt2.yaml"), "--show-config"]) in (0, None)
    shown = yaml.safe_load(capsys.readouterr().out)
    code = {"gamma": 0.95, "return_includes_current": True, "whiten": True, "whiten_padded": True,
            "weight_in_ratio": True, "single_step_weighted": False, "reward_scale": 2.0, "reward_clip": 100.0,
            "pretrain_kd_ratio": 0.5, "eval_rollouts": 1000, "long_prompts": "drop"}
    assert {name: shown[name] for name in code} == code
    paper = load(config_class("minillm"), CONFIGS / "minillm.yaml")
    assert (paper.gamma, paper.return_includes_current, paper.whiten, paper.single_step_weighted) == \
        (1.0, False, False, True)
    assert (paper.reward_scale, paper.reward_clip, paper.pretrain_kd_ratio, paper.weight_in_ratio) == \
        (1.0, None, 0.0, True)


def test_unknown_keys_and_bad_values_are_user_errors(tmp_path):
    with pytest.raises(HarnessError, match="unknown setting"):
        load(config_class("kd"), CONFIGS / "kd.yaml", ["kd_ration=0.3"])
    with pytest.raises(HarnessError, match="precision"):
        load(config_class("sft"), CONFIGS / "sft.yaml", ["precision=fp8"])
    with pytest.raises(HarnessError, match="unknown training method"):
        config_class("ppo")
    with pytest.raises(HarnessError, match="rollout_backend"):
        load(config_class("minillm"), CONFIGS / "minillm.yaml", ["rollout_backend=sglang"])


@pytest.mark.parametrize("change", ["top_p=0.9", "temperature=3"])
def test_vllm_rollouts_refuse_what_the_engines_cannot_sample_before_starting_them(synth, tmp_path, change):
    from harness.trainers.minillm import MiniLLMTrainer
    from tests.trainers.conftest import base_overrides

    config = load(config_class("minillm"), CONFIGS / "minillm.yaml",
                  base_overrides(synth, tmp_path) + ["rollout_backend=vllm", change])
    with pytest.raises(HarnessError, match="use torch"):
        MiniLLMTrainer(config).setup()


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_configs_are_valid_and_leave_precision_to_the_recipe(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # unknown keys are errors
    assert config.num_processes == 8 and config.mixed_precision is None  # launch then passes "no"
    assert config.distributed_type in ("MULTI_GPU", "FSDP", "DEEPSPEED")
