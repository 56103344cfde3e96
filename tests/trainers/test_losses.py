"""Each loss term of trainers/ against a direct computation on small tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.trainers.data import IGNORE_INDEX
from harness.trainers.kd import kd_loss, soft_cross_entropy
from harness.trainers.minillm import length_normalised_return, teacher_mixed_weights, token_reverse_kl, token_rewards
from harness.trainers.policy_gradient import ppo_clipped_loss, whiten_minibatch
from harness.trainers.sft import cross_entropy


def _logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def test_single_step_term_is_the_exact_token_level_reverse_kl():
    student, teacher = _logits(2, 3, 7), _logits(2, 3, 7, seed=1)
    got = token_reverse_kl(student, teacher)
    for b in range(2):
        for t in range(3):
            q, p = F.softmax(student[b, t].float(), -1), F.softmax(teacher[b, t].float(), -1)
            expected = sum(q[v] * (q[v].log() - p[v].log()) for v in range(7))
            # it is also -E_{y ~ q}[r(y)] with r = log p - log q, the expected single-step reward
            assert got[b, t].item() == pytest.approx(expected.item(), rel=1e-5)
            assert got[b, t].item() == pytest.approx(-(q * (p.log() - q.log())).sum().item(), rel=1e-5)
    assert token_reverse_kl(student, student).abs().max().item() < 1e-6


def test_teacher_mixed_weights_are_q_over_the_mixture():
    q = F.softmax(_logits(3, 5), -1)
    p = F.softmax(_logits(3, 5, seed=2), -1)
    for alpha in (0.0, 0.2, 0.5, 1.0):
        got = teacher_mixed_weights(q.log(), p.log(), alpha)
        assert torch.allclose(got, q / (alpha * p + (1 - alpha) * q), atol=1e-10)


def _hand_return(rewards, mask, gamma, include_current, normalise):
    out = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        length = int(mask[b].sum())
        for t in range(length):
            start = t if include_current else t + 1
            future = [rewards[b, k].item() for k in range(start, length)]
            total = sum(gamma ** i * r for i, r in enumerate(future))
            out[b, t] = total / len(future) if normalise and future else total
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.95])
@pytest.mark.parametrize("include_current", [False, True])
@pytest.mark.parametrize("normalise", [True, False])
def test_length_normalised_return_matches_a_hand_loop(gamma, include_current, normalise):
    rewards = _logits(3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float64)
    got = length_normalised_return(rewards, mask, gamma, include_current, normalise)
    assert torch.allclose(got, _hand_return(rewards, mask, gamma, include_current, normalise), atol=1e-10)


def test_token_rewards_scale_then_clip():
    teacher, student = torch.tensor([[-1.0, -300.0]]), torch.tensor([[-2.0, -1.0]])
    assert token_rewards(teacher, student).tolist() == [[1.0, -299.0]]
    assert token_rewards(teacher, student, scale=2.0, clip=100.0).tolist() == [[2.0, -100.0]]


def test_ppo_clipping_stops_the_gradient_outside_the_trust_region():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]])).requires_grad_()
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = ppo_clipped_loss(new, old, advantages, torch.ones(1, 4), clip_eps=0.2)
    # ratios 1.5 (A>0) and 0.5 (A<0) are clipped to 1.2 and 0.8; the two inside the region are not
    expected = -(1.2 * 1.0) + (0.8 * 1.0) - (1.1 * 1.0) + (0.9 * 1.0)
    assert loss.item() == pytest.approx(expected / 4, rel=1e-6)
    assert clipped.item() == pytest.approx(0.5)
    loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] == 0
    assert new.grad[0, 2] == pytest.approx(-1.1 / 4) and new.grad[0, 3] == pytest.approx(0.9 / 4)


def test_ppo_does_not_clip_in_the_direction_that_lowers_the_objective():
    # ratio 0.5 with a positive advantage: min(rho A, clip(rho) A) keeps the unclipped (worse) value
    loss, clipped = ppo_clipped_loss(torch.log(torch.tensor([[0.5]])), torch.zeros(1, 1), torch.ones(1, 1),
                                     torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(-0.5) and clipped.item() == 0


def test_the_importance_weight_alone_can_push_the_ratio_out_of_the_clip_region():
    # the policy has not moved (q = q_old), but w = 1.5 and 0.5 put w * ratio outside [0.8, 1.2]: both are clipped
    new = torch.zeros(1, 3, requires_grad=True)
    weights, advantages = torch.tensor([[1.5, 0.5, 1.1]]), torch.tensor([[1.0, -1.0, 1.0]])
    loss, clipped = ppo_clipped_loss(new, torch.zeros(1, 3), advantages, torch.ones(1, 3), 0.2, weights)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1) / 3, rel=1e-6)
    assert clipped.item() == pytest.approx(2 / 3)
    loss.backward()
    assert new.grad[0, :2].tolist() == [0.0, 0.0] and new.grad[0, 2].item() == pytest.approx(-1.1 / 3)
    # the earlier form, w on the advantage outside the clip, never clips an unmoved policy
    _, clipped = ppo_clipped_loss(torch.zeros(1, 3), torch.zeros(1, 3), weights * advantages, torch.ones(1, 3), 0.2)
    assert clipped.item() == 0


def test_minibatch_whitening_matches_the_reference_statistics():
    values = _logits(2, 3) + 3
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float64)
    values = values * mask  # returns are zero on padding, as the trainer stores them
    # the code's form: mean and population variance over the response padded to its full length (here 5)
    padded = F.pad(values, (0, 2))
    mean, variance = padded.mean(), padded.var(unbiased=False)
    expected = (values - mean) / torch.sqrt(variance + 1e-8) * mask
    assert torch.allclose(whiten_minibatch(values, mask, padded_width=5), expected)
    # masked form: the response tokens only
    kept = values[mask.bool()]
    expected = (values - kept.mean()) / torch.sqrt(kept.var(unbiased=False) + 1e-8) * mask
    assert torch.allclose(whiten_minibatch(values, mask), expected)
    # statistics summed over processes: a second process holding the same rows doubles every sum and count,
    # which leaves mean and variance, and so the result, unchanged only if all of them go through the reduction
    doubled = whiten_minibatch(values, mask, 5, lambda t: 2 * t)
    assert torch.allclose(doubled, whiten_minibatch(values, mask, padded_width=5))


def test_whiten_gives_zero_mean_unit_variance_on_the_mask():
    values, mask = _logits(2, 5) + 3, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    out = whiten_minibatch(values, mask)
    kept = out[mask.bool()]
    assert kept.mean().item() == pytest.approx(0, abs=1e-7)
    assert kept.pow(2).mean().item() == pytest.approx(1, rel=1e-6)
    assert out[~mask.bool()].abs().max() == 0


def test_soft_cross_entropy_has_the_gradient_of_forward_kl():
    student = _logits(2, 3, 6).requires_grad_()
    teacher = _logits(2, 3, 6, seed=3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.float64)
    (soft_grad,) = torch.autograd.grad(soft_cross_entropy(student, teacher, mask), student)
    per_token_kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                            reduction="none").sum(-1)
    (kl_grad,) = torch.autograd.grad((per_token_kl * mask).sum() / mask.sum(), student)
    assert torch.allclose(soft_grad, kl_grad, atol=1e-10)
    assert soft_grad.abs().sum() > 0


def test_kd_loss_mixes_ce_and_soft_ce_on_response_positions_only():
    student, teacher = _logits(1, 4, 5), _logits(1, 4, 5, seed=4)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1]])  # positions 0-1 are the prompt
    loss, ce, soft = kd_loss(student, teacher, labels, kd_ratio=0.5)
    log_q = F.log_softmax(student[0], -1)
    expected_ce = -(log_q[1, 3] + log_q[2, 1]) / 2
    p = F.softmax(teacher[0], -1)
    expected_soft = -((p[1] * log_q[1]).sum() + (p[2] * log_q[2]).sum()) / 2
    assert ce.item() == pytest.approx(expected_ce.item(), rel=1e-6)
    assert soft.item() == pytest.approx(expected_soft.item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * ce.item() + 0.5 * soft.item(), rel=1e-6)
    assert cross_entropy(student, labels).item() == pytest.approx(expected_ce.item(), rel=1e-6)
