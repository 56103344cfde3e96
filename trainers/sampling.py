"""Shared generation and log-prob helpers: a plain sampling loop with a KV cache, and teacher-forced scoring.

The loop is ours rather than `model.generate` because MiniLLM samples each token from a mixture of two models
(0.8 q + 0.2 p), which `generate` cannot express; plain sampling is the same loop without the second model.
Logits are cut to the tokenizer's length so padded embedding rows never receive probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.backends.base import NgramBan
from harness.trainers.data import left_pad


@dataclass
class Rollout:
    """Prompts (left-padded) and sampled responses (right-padded); all tensors on the CPU."""

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T), 1 up to and including eos

    def to(self, device: torch.device) -> Rollout:
        return Rollout(*(tensor.to(device) for tensor in vars(self).values()))


def pack_rollout(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Rollout:
    """Token lists as a Rollout: prompts left-padded, responses right-padded."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    width = max(1, max(len(response) for response in responses))
    response_ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width), dtype=torch.long)
    for row, response in enumerate(responses):
        response_ids[row, : len(response)] = torch.tensor(response, dtype=torch.long)
        response_mask[row, : len(response)] = 1
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, whatever the left padding."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`, renormalised. probs: (B, V)."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(-1, keepdim=True)


class _Stepper:
    """One model's incremental forward passes over a growing batch of sequences."""

    def __init__(self, model, vocab_size: int):
        self.model, self.vocab_size, self.cache = model, vocab_size, None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, V) given the new `ids` (B, n) and the full attention `mask` so far."""
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions(mask)[:, -ids.shape[1] :],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, : self.vocab_size].float()


@torch.no_grad()
def sample(
    policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    eos_id: int,
    pad_id: int,
    vocab_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    mixer=None,
    mix_alpha: float = 0.0,
    no_repeat_ngram_size: int = 0,
) -> Rollout:
    """Sample responses from `policy`, or token by token from (1 - mix_alpha) policy + mix_alpha mixer.

    prompt_ids, prompt_mask: (B, P) left-padded, on the models' device. Draws use torch's global RNG, whose state
    the trainer checkpoints, so a resumed run samples the same tokens. `no_repeat_ngram_size` bans, as transformers
    does, a token that would repeat an n-gram of the row's prompt and response so far.
    """
    steppers = [_Stepper(policy, vocab_size)] + ([_Stepper(mixer, vocab_size)] if mixer is not None else [])
    ids, mask = prompt_ids, prompt_mask
    finished = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    bans = [NgramBan(row[keep.bool()].tolist(), no_repeat_ngram_size) for row, keep in zip(ids, mask)]
    tokens, alive = [], []
    for _ in range(max_new_tokens):
        probs = [F.softmax(step(ids, mask) / temperature, dim=-1) for step in steppers]
        mixed = probs[0] if mixer is None else (1 - mix_alpha) * probs[0] + mix_alpha * probs[1]
        if no_repeat_ngram_size:
            mixed = _without_banned(mixed, bans)
        token = torch.multinomial(top_p_filter(mixed, top_p), 1).squeeze(-1)
        was_alive = ~finished
        token = token.masked_fill(finished, pad_id)
        for ban, new in zip(bans, token.tolist()) if no_repeat_ngram_size else ():
            ban.push(new)
        tokens.append(token)
        alive.append(was_alive)
        finished = finished | (token == eos_id)
        ids = token[:, None]
        mask = torch.cat([mask, was_alive[:, None].long()], dim=1)
        if finished.all():
            break
    response = torch.stack(tokens, dim=1)
    return Rollout(prompt_ids.cpu(), prompt_mask.cpu(), response.cpu(), torch.stack(alive, dim=1).long().cpu())


def _without_banned(probs: torch.Tensor, bans: list[NgramBan]) -> torch.Tensor:
    """probs (B, V) with each row's banned tokens at 0, renormalised (a row left with no mass keeps its own)."""
    out = probs.clone()
    for row, ban in enumerate(bans):
        banned = list(ban.banned())
        if banned:
            out[row, banned] = 0.0
    total = out.sum(-1, keepdim=True)
    return torch.where(total > 0, out / total.clamp(min=1e-30), probs)


def response_logits(model, rollout: Rollout, vocab_size: int, after_last: bool = False) -> torch.Tensor:
    """Teacher-forced logits (B, T, V) that predict each response token of `rollout` (already on device); with
    `after_last`, (B, T + 1, V): also the distribution after the last response token."""
    ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    start = rollout.prompt_ids.shape[1] - 1
    return logits[:, start : start + rollout.response_ids.shape[1] + after_last, :vocab_size].float()


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log-softmax of `logits` (B, T, V) at `ids` (B, T)."""
    return torch.gather(F.log_softmax(logits, dim=-1), -1, ids.clamp(min=0)[..., None]).squeeze(-1)
