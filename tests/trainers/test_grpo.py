"""GRPO: advantages and aggregations by hand, the loss equal to TRL's GRPOTrainer on one batch, rewards that cannot
stall a step, and a short run on the tiny math data."""

from __future__ import annotations

import json
import time

import pytest
import torch

from harness.config import load
from harness.trainers.grpo import GRPOConfig, GRPOTrainer, group_advantages, grpo_loss
from harness.trainers.policy_gradient import aggregate, token_entropy
from harness.trainers.sampling import Rollout, pack_rollout, response_logits, token_logprobs


@pytest.fixture(scope="module")
def tiny_math():
    from harness import tiny_math

    return tiny_math.build()


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    plain = group_advantages(rewards, 4, std=False)
    assert plain.tolist() == [0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]
    scaled = group_advantages(rewards, 4, std=True)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()  # unbiased: 0.5
    assert scaled[:4].tolist() == pytest.approx([0.75 / (std + 1e-4)] + [-0.25 / (std + 1e-4)] * 3)
    assert scaled[4:].abs().max() == 0  # an all-correct group carries no signal


def test_aggregations_by_hand():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(losses, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(losses, mask, "sequence_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(losses, mask, "dr_grpo", max_length=5).item() == pytest.approx(10 / (2 * 5))


# ---- the loss against TRL's ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trl_trainer(tiny_math, tmp_path_factory):
    """TRL's GRPOTrainer on the tiny math policy; its `_compute_loss` is what is compared."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_math.policy)
    tokenizer = AutoTokenizer.from_pretrained(tiny_math.policy)
    args = trl.GRPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=4,
                          num_generations=4, max_completion_length=12, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                          entropy_coef=0.01, use_cpu=True, bf16=False, report_to=[], temperature=1.0)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=args, processing_class=tokenizer,
                              train_dataset=datasets.Dataset.from_dict({"prompt": ["Compute 2 + 3 - 1."] * 8}))
    return trainer


def _batch(tiny_math, seed: int = 0) -> dict[str, torch.Tensor]:
    """Four prompts, ragged responses, random advantages and perturbed old/ref log-probs.

    The prompts have one length: TRL runs left-padded rows with position ids counted from the padding, we from the
    first real token, which would make the log-probs, not the loss, differ.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_math.policy)
    generator = torch.Generator().manual_seed(seed)
    prompts = [tokenizer(text)["input_ids"] for text in
               ("Compute 2 + 3 - 1.", "Compute 4 * 3 + 4.", "Compute 6 - 2 - 1.", "Compute 7 + 8 - 3.")]
    responses = [torch.randint(0, len(tokenizer), (length,), generator=generator).tolist() for length in (12, 7, 3, 10)]
    rollout = pack_rollout(prompts, responses, tokenizer.pad_token_id)
    assert rollout.prompt_mask.all()
    shape = rollout.response_ids.shape
    return {"rollout": rollout, "advantages": torch.randn(4, generator=generator),
            "old_shift": 0.3 * torch.randn(shape, generator=generator),
            "ref_shift": 0.5 * torch.randn(shape, generator=generator)}


@pytest.mark.parametrize(("trl_loss", "ours", "kl_ratio_weighted"), [
    ("dr_grpo", "dr_grpo", False), ("dr_grpo", "dr_grpo", True), ("bnpo", "token_mean", True),
    ("grpo", "sequence_mean", False)])
def test_our_grpo_loss_equals_trls_on_the_same_batch(trl_trainer, tiny_math, trl_loss, ours, kl_ratio_weighted):
    batch = _batch(tiny_math)
    rollout: Rollout = batch["rollout"]
    model = trl_trainer.model
    model.eval()  # TRL then divides by no accumulation steps
    trl_trainer.loss_type = trl_loss
    trl_trainer.args.use_bias_correction_kl = kl_ratio_weighted
    with torch.no_grad():
        current = token_logprobs(response_logits(model, rollout, model.config.vocab_size), rollout.response_ids)
    old, ref = current + batch["old_shift"], current + batch["ref_shift"]
    inputs = {"prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
              "completion_ids": rollout.response_ids, "completion_mask": rollout.response_mask,
              "advantages": batch["advantages"], "old_per_token_logps": old, "ref_per_token_logps": ref}
    theirs = trl_trainer._compute_loss(model, inputs)
    their_grad = torch.autograd.grad(theirs, list(model.parameters()))

    logits = response_logits(model, rollout, model.config.vocab_size)
    logprobs = token_logprobs(logits, rollout.response_ids)
    mask = rollout.response_mask.float()
    loss, _ = grpo_loss(logprobs, old, batch["advantages"][:, None] * mask, mask, clip_low=0.2, clip_high=0.28,
                        aggregation=ours, max_length=12, ref_logprobs=ref, kl_coef=0.04,
                        kl_ratio_weighted=kl_ratio_weighted,
                        entropies=token_entropy(logits), entropy_coef=0.01)
    our_grad = torch.autograd.grad(loss, list(model.parameters()))
    assert loss.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    for mine, other in zip(our_grad, their_grad, strict=True):
        assert torch.allclose(mine, other, rtol=1e-4, atol=1e-7)
    assert abs(theirs.item()) > 1e-3  # a batch where every term is at work


# ---- rewards ---------------------------------------------------------------------------------------------
def test_an_adversarial_answer_times_out_without_stalling_the_step(tiny_math, tmp_path):
    config = load(GRPOConfig, None, [f"model={tiny_math.policy}", "reward_timeout=5.0"])
    trainer = GRPOTrainer(config)
    from transformers import AutoTokenizer

    trainer.tokenizer = AutoTokenizer.from_pretrained(tiny_math.policy)
    texts = ["so \\boxed{9^{9^{9^{9}}}}", "2 + 3 = 5.\n\nThe answer is \\boxed{5}.", "\\boxed{(x+1)^2}",
             "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}", "no answer"]
    golds = ["5", "5", "x^2+2x+1", "5", "5"]
    rollout = pack_rollout([[1]] * len(texts), [trainer.tokenizer(t)["input_ids"] for t in texts], 0)
    trainer.rewards(rollout, ["1"] * len(texts))  # starts the verifier workers
    start = time.monotonic()
    rewards = trainer.rewards(rollout, golds)
    assert rewards.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert time.monotonic() - start < 2 * 5.0 + 5.0  # two overrunning answers, each killed at its timeout


def test_problems_come_from_a_dataset_by_id_with_sliced_splits(tiny_math, tmp_path):
    """`dataset` goes through datasets.load_dataset, the call a hub id takes; a local folder keeps it offline."""
    from transformers import AutoTokenizer

    from harness.errors import HarnessError

    rows = [{"question": f"What is {i} + {i}?", "final": str(2 * i)} for i in range(10)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = load(GRPOConfig, None, [f"model={tiny_math.policy}", f"dataset={tmp_path}", "prompt_field=question",
                                     "answer_field=final", "valid_split=train[-3:]", "data_dir=/nonexistent"])
    trainer = GRPOTrainer(config)
    trainer.tokenizer = AutoTokenizer.from_pretrained(tiny_math.policy)
    train = trainer.read_problems(config.train_file, config.train_split, None)
    valid = trainer.read_problems(config.valid_file, config.valid_split, None)
    assert [p.answer for p in train] == [str(2 * i) for i in range(10)]
    assert [p.answer for p in valid] == ["14", "16", "18"]
    assert "What is 9 + 9?" in trainer.tokenizer.decode(valid[-1].prompt_ids)
    with pytest.raises(HarnessError, match="split test"):
        trainer.read_problems(config.valid_file, "test", None)


def test_group_stats_count_groups_all_right_and_all_wrong(tiny_math):
    config = load(GRPOConfig, None, [f"model={tiny_math.policy}", "group_size=4"])
    rewards = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]]).view(-1, 1).repeat(1, 3)
    mask = torch.ones(12, 3)
    mask[0, 2] = 0
    stats = GRPOTrainer(config).group_stats({"rewards": rewards, "response_mask": mask})
    assert stats == {"reward": pytest.approx(6 / 12), "response_length": pytest.approx(35 / 12),
                     "groups_all_correct": pytest.approx(1 / 3), "groups_all_wrong": pytest.approx(1 / 3)}


# ---- a short run ------------------------------------------------------------------------------------------
GRPO_RUN = ["rollouts_per_round=4", "group_size=4", "batch_size=8", "micro_batch_size=4", "max_new_tokens=24",
            "max_steps=4", "rollout_batch_size=4", "max_eval_samples=8", "eval_problems=4", "lr=1e-3",
            "max_prompt_tokens=64", "save_every=2", "eval_every=2", "progress=false", "kl_coef=0.04",
            "entropy_coef=0.01", "ppo_epochs=2"]


def test_grpo_runs_on_the_tiny_math_data_and_logs_its_groups(tiny_math, tmp_path):
    from harness.trainers import train

    paths = train("grpo", None, [f"model={tiny_math.policy}", f"data_dir={tiny_math.data / 'math_synth'}",
                                 f"output_dir={tmp_path}", *GRPO_RUN])
    assert [p.name for p in paths] == ["step-2", "step-4"]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    for record in log:
        for name in ("reward", "groups_all_correct", "groups_all_wrong", "kl", "entropy", "clip_fraction"):
            assert name in record, name
    assert "valid_reward" in log[1] and "valid_loss" in log[1]
    assert log[1]["kl"] > 0  # the second PPO epoch starts from updated weights
