"""TRAPO: the guidance schedule by table, Trust-Region SFT values and gradients, prefix snapping, and a run whose
guided responses really start with the expert prefix."""

from __future__ import annotations

import json

import pytest
import torch

from harness.trainers.trapo import blank_line_ends, next_prefix_fraction, prefix_cut, trust_region_sft_loss


@pytest.mark.parametrize(("correct", "seen", "fraction"), [
    (0, 4, 0.25), (1, 4, 0.25), (2, 4, 0.0), (4, 4, 0.0),
    (0, 6, 0.5), (3, 6, 0.5), (4, 6, 0.0), (6, 6, 0.0),
    (0, 7, 1.0), (6, 7, 1.0), (7, 7, 0.0),
])
def test_next_prefix_fraction_follows_the_schedule(correct, seen, fraction):
    assert next_prefix_fraction(correct, seen) == fraction


def test_a_micro_group_starts_only_after_4_6_or_7_responses():
    with pytest.raises(ValueError, match="4, 6 or 7"):
        next_prefix_fraction(0, 5)


def test_trust_region_sft_values_and_gradients():
    p = torch.tensor([0.9, 0.5, 0.1, 0.05, 0.01], dtype=torch.float64)
    logprobs = p.log().requires_grad_(True)
    loss = trust_region_sft_loss(logprobs, alpha=0.1)
    assert loss.shape == p.shape  # not reduced
    # inside the region -p/p = -1; outside -p/alpha
    assert loss.tolist() == pytest.approx([-1.0, -1.0, -1.0, -0.5, -0.1])
    (gradient,) = torch.autograd.grad(loss.sum(), logprobs)
    # d/dlog p: -1 inside the region (SFT's -log p), -p/alpha outside
    assert gradient.tolist() == pytest.approx([-1.0, -1.0, -1.0, -0.5, -0.1])


@pytest.mark.parametrize(("ends", "length", "fraction", "cut"), [
    ([5, 11], 20, 0.25, 11),  # nominal 5; the blank line ending at 5 is not past it; its last token 10 < 11
    ([5, 12], 20, 0.25, 5),  # the next blank line is too far (11 >= 20 * 0.55): nominal
    ([7], 20, 0.25, 7),  # ends within +30%
    ([], 20, 0.5, 10),  # no blank line: nominal
    ([3, 8], 20, 0.5, 10),  # all blank lines before the nominal cut
    ([5, 12], 20, 1.0, 20),  # the whole solution
])
def test_prefix_cut_snaps_to_the_next_blank_line_within_30_percent(ends, length, fraction, cut):
    assert prefix_cut(ends, length, fraction) == cut


@pytest.fixture(scope="module")
def tiny_math():
    from harness import tiny_math

    return tiny_math.build()


def test_blank_line_ends_of_a_tiny_expert_solution(tiny_math):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_math.policy)
    text = "2 + 3 = 5.\n\n5 - 1 = 4.\n\nThe answer is \\boxed{4}."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = blank_line_ends(tokenizer, ids)
    assert [tokenizer.decode(ids[:end]) for end in ends] == ["2 + 3 = 5.\n\n", "2 + 3 = 5.\n\n5 - 1 = 4.\n\n"]


TRAPO_RUN = ["rollouts_per_round=2", "batch_size=16", "micro_batch_size=8", "max_new_tokens=32", "max_steps=2",
             "rollout_batch_size=2", "max_eval_samples=4", "eval_problems=4", "lr=1e-3", "max_prompt_tokens=64",
             "progress=false"]


def test_trapo_guides_an_untrained_policy_and_trains_on_the_expert_prefix(tiny_math, tmp_path):
    """An untrained policy solves nothing, so every prompt gets all three guided micro-groups; the fully guided
    response is the expert solution and scores 1."""
    from harness.config import load
    from harness.trainers.trapo import TRAPOConfig, TRAPOTrainer

    config = load(TRAPOConfig, None, [f"model={tiny_math.policy}", f"data_dir={tiny_math.data / 'math_synth'}",
                                      f"output_dir={tmp_path}", *TRAPO_RUN])
    trainer = TRAPOTrainer(config)
    trainer.setup()
    torch.manual_seed(0)
    problems = trainer.problems[:2]
    buffer, fractions = trainer.guided_group(problems)
    assert fractions == [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    forced, trsft, mask = buffer["forced_mask"], buffer["trsft_mask"], buffer["response_mask"]
    rewards = buffer["rewards"][:, 0].view(2, 8)
    assert rewards[:, 7].tolist() == [1.0, 1.0]  # the whole expert solution is right
    for index, problem in enumerate(problems):
        rows = buffer["response_ids"][index * 8 : index * 8 + 8]
        assert forced[index * 8 : index * 8 + 4].sum() == 0  # micro-group 1: unguided
        last = rows[7][mask[index * 8 + 7].bool()].tolist()
        assert last == problem.solution_ids and forced[index * 8 + 7].sum() == len(last)
        quarter = int(forced[index * 8 + 4].sum())
        assert rows[4][:quarter].tolist() == problem.solution_ids[:quarter]
        assert 0 < quarter < len(problem.solution_ids) * 0.55
    assert torch.equal(trsft, forced)  # the paper: TrSFT on every guided response

    trainer.loop(trainer.restore())
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # every update holds guided responses, whose TrSFT loss per token lies in [-1, 0)
    assert all(0 < record["forced_fraction"] < 1 and -1 <= record["trsft_loss"] < 0 for record in log)
    trainer.rollouts.close()


def test_the_released_code_trains_only_the_second_response_of_micro_group_2(tiny_math, tmp_path):
    from harness.config import load
    from harness.trainers.trapo import TRAPOConfig, TRAPOTrainer

    config = load(TRAPOConfig, None, [f"model={tiny_math.policy}", f"data_dir={tiny_math.data / 'math_synth'}",
                                      f"output_dir={tmp_path}", *TRAPO_RUN, "trsft_second_sample_only=true"])
    trainer = TRAPOTrainer(config)
    trainer.setup()
    buffer, _ = trainer.guided_group(trainer.problems[:1])
    guided = buffer["forced_mask"].sum(1) > 0
    trained = buffer["trsft_mask"].sum(1) > 0
    assert guided.tolist() == [False] * 4 + [True] * 4
    assert trained.tolist() == [False] * 4 + [False, True, True, True]
