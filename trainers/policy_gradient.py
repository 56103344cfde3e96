"""Policy-gradient pieces every on-policy trainer shares, as pure functions of tensors, and the rollout buffer.

All token tensors are (B, T) over response positions with a 0/1 `mask`; advantages are per token (a sequence-level
advantage is broadcast over its tokens). The buffer is a dict of CPU tensors, prompt columns left-padded and
response columns right-padded, which `merge_rollouts` concatenates and `trim` slices into micro-batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten_minibatch(
    values: torch.Tensor, mask: torch.Tensor, padded_width: int | None = None, reduce_sum=lambda t: t
) -> torch.Tensor:
    """Advantage whitening of one PPO mini-batch, with statistics summed over all processes by `reduce_sum`.

    The released code (utils.py `whiten` and `get_global_statistics`, called from losses.py for each mini-batch)
    takes the mean and population variance over every entry of the response tensor, padded to the full response
    length with zero returns; with `padded_width` (that length) so does this. Without it only the response tokens
    (`mask`) count. values, mask: (B, T) -> (B, T), padding -> 0.
    """
    mask = mask.to(values.dtype)
    counted = mask if padded_width is None else torch.ones_like(mask)
    # zero-padded columns beyond T change only the count: each adds (0 - mean)^2 to the squared deviations
    missing = 0 if padded_width is None else values.shape[0] * max(0, padded_width - values.shape[1])
    totals = reduce_sum(torch.stack([(values * mask).sum(), counted.sum() + missing]))
    mean = totals[0] / totals[1].clamp(min=1)
    squares = reduce_sum(((values - mean) ** 2 * counted).sum() + missing * mean**2)
    return (values - mean) * torch.rsqrt(squares / totals[1].clamp(min=1) + 1e-8) * mask


def clipped_ratio_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                       clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token: max(-A rho, -A clip(rho, 1 - low, 1 + high)), rho = pi / pi_old.

    Returns the (B, T) losses and a (B, T) flag of the tokens where the clipped branch was taken. Advantages and
    old log-probs are constants. With clip_low = clip_high it is Schulman et al.'s PPO; DAPO raises clip_high.
    """
    ratio = (logprobs - old_logprobs).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def ppo_clipped_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The token mean of `clipped_ratio_loss` with one eps; returns (loss, fraction of clipped tokens).

    `weights` (constants w_t, MiniLLM's importance weights) multiply the ratio before the clip, as MiniLLM's released
    code does (losses.py `_pg_loss`: `ratio = ratio * w`): log(w) shifts the log-ratio. None means w_t = 1.
    """
    shifted = old_logprobs if weights is None else old_logprobs - weights.log()
    losses, clipped = clipped_ratio_loss(logprobs, shifted, advantages, clip_eps, clip_eps)
    return masked_mean(losses, mask), masked_mean(clipped.float(), mask)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per sampled token: exp(r) - r - 1, r = log pi_ref - log pi."""
    delta = ref_logprobs - logprobs
    return delta.exp() - delta - 1


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution. logits (B, T, V) -> (B, T)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def aggregate(losses: torch.Tensor, mask: torch.Tensor, how: str, max_length: int | None = None) -> torch.Tensor:
    """Reduce (B, T) token losses to a scalar.

    token_mean: over all tokens of the batch (DAPO, TRL `bnpo`); sequence_mean: over each response, then over
    responses (the GRPO paper, TRL `grpo`); dr_grpo: the sum over B * max_length, a constant that does not
    favour short or long responses (Dr. GRPO, TRL `dr_grpo`; TRAPO's released loss).
    """
    mask = mask.to(losses.dtype)
    if how == "token_mean":
        return masked_mean(losses, mask)
    if how == "sequence_mean":
        return ((losses * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if how == "dr_grpo":
        assert max_length is not None, "dr_grpo divides by the maximum response length"
        return (losses * mask).sum() / (losses.shape[0] * max_length)
    raise ValueError(f"unknown loss aggregation {how!r}")


# ---- the rollout buffer ----------------------------------------------------------------------------------
def trim(buffer: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of the rollout buffer, without columns that are padding in all of them."""
    part = {name: tensor[rows] for name, tensor in buffer.items() if tensor.ndim == 2}
    keep_prompt = part["prompt_mask"].any(0).nonzero()[0, 0].item()
    keep_response = int(part["response_mask"].any(0).sum().item()) or 1
    for name in part:
        part[name] = part[name][:, keep_prompt:] if name.startswith("prompt") else part[name][:, :keep_response]
    part["attention_mask"] = torch.cat([part["prompt_mask"], part["response_mask"]], dim=1)
    return part


def merge_rollouts(parts: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate scored batches: prompt columns padded on the left, response columns on the right."""
    prompt_width = max(p["prompt_ids"].shape[1] for p in parts)
    response_width = max(p["response_ids"].shape[1] for p in parts)
    merged = {}
    for name in parts[0]:
        pieces = []
        for part in parts:
            tensor = part[name]
            if tensor.ndim == 2:
                value = pad_id if name.endswith("_ids") else 0
                width = prompt_width if name.startswith("prompt") else response_width
                pad = (width - tensor.shape[1], 0) if name.startswith("prompt") else (0, width - tensor.shape[1])
                tensor = F.pad(tensor, pad, value=value)
            pieces.append(tensor)
        merged[name] = torch.cat(pieces)
    return merged


def epoch_schedule(rows: int, epochs: int, rows_per_step: int, micro_batch_size: int) -> list[list[torch.Tensor]]:
    """Per coming optimizer step, the buffer rows of each micro-batch: `epochs` shuffled passes over the buffer.

    The shuffles draw from torch's global RNG, which checkpoints save.
    """
    pending = []
    for _ in range(epochs):
        order = torch.randperm(rows)
        for start in range(0, len(order), rows_per_step):
            pending.append(list(order[start : start + rows_per_step].split(micro_batch_size)))
    return pending
