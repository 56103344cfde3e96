"""Off-policy influence for CROPI: the offline rollouts store, per-prompt gradients of the GRPO surrogate, the
sparse random projection and the selection rules, as pieces a trainer composes (`trainers/cropi.py`).

A prompt's influence on a validation set is the cosine between its gradient and the validation set's mean gradient,
both of the GRPO surrogate evaluated on stored responses of the initial policy, so no new sampling is needed when the
policy moves. Gradients are flattened over every trainable parameter; for large models they are compared after a
sparse random projection (a seeded subset of coordinates, then a seeded Gaussian map to `dim` dimensions) whose
matrix is generated block by block and never held whole.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.trainers.policy_gradient import aggregate, k3_kl, merge_rollouts

COORDINATE_BLOCK = 1 << 22  # coordinates whose keep/drop draws are made at once
_MASK_STREAM, _MATRIX_STREAM = 1, 2


# ---- the objective whose gradient is compared ------------------------------------------------------------
def off_policy_surrogate(logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, *, kl_coef: float, aggregation: str, max_length: int) -> torch.Tensor:
    """CROPI's per-prompt objective on stored responses: the GRPO surrogate with the importance ratio
    pi_theta / pi_behaviour left unclipped, plus kl_coef times the k3 KL to the initial policy, which is the behaviour
    policy of the offline rollouts. All (G, T); advantages per token (the group's, from the stored rewards)."""
    ratio = (logprobs - behaviour_logprobs).exp()
    losses = -advantages * ratio + kl_coef * k3_kl(logprobs, behaviour_logprobs)
    return aggregate(losses, mask, aggregation, max_length)


def flat_gradient(loss: torch.Tensor, parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """d loss / d parameters as one vector (the parameters' order): one backward pass for a whole response group."""
    return torch.cat([grad.reshape(-1) for grad in torch.autograd.grad(loss, list(parameters))])


# ---- the sparse random projection ------------------------------------------------------------------------
def _generator(seed: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    # one generator per draw, read block after block in order (the CPU generator keeps 32 bits of a seed, so
    # seeding each block apart would make blocks of different seeds collide)
    return torch.Generator(device=device).manual_seed(seed * 4 + stream)


class SparseProjection:
    """x (num_params,) -> P x (dim,): keep each coordinate with probability `keep_ratio`, then multiply the kept
    coordinates by a Gaussian matrix with N(0, 1 / (dim * keep_ratio)) entries, so E<Px, Py> = <x, y>.

    Both draws come from generators seeded by `seed`, read in blocks in a fixed order (COORDINATE_BLOCK coordinates
    for the subset, `chunk` kept rows for the matrix), so the map depends only on (num_params, dim, keep_ratio, seed,
    chunk) and the device the matrix is drawn on, never on how many vectors are projected at once; at most
    `chunk` x `dim` of the matrix exists at a time.
    """

    def __init__(self, num_params: int, dim: int, keep_ratio: float = 0.1, seed: int = 0, chunk: int = 1024):
        if not 0 < keep_ratio <= 1:
            raise HarnessError(f"keep_ratio={keep_ratio}: choose a share of gradient coordinates in (0, 1]")
        if dim < 1 or chunk < 1:
            raise HarnessError("projection_dim and projection_chunk must be at least 1")
        self.num_params, self.dim, self.keep_ratio, self.seed, self.chunk = num_params, dim, keep_ratio, seed, chunk

    @cached_property
    def kept(self) -> torch.Tensor:
        """Indices of the kept coordinates, ascending (drawn on the CPU: the same on every device)."""
        if self.keep_ratio == 1:
            return torch.arange(self.num_params)
        parts, generator = [], _generator(self.seed, _MASK_STREAM)
        for start in range(0, self.num_params, COORDINATE_BLOCK):
            size = min(COORDINATE_BLOCK, self.num_params - start)
            draws = torch.rand(size, generator=generator)
            parts.append(start + (draws < self.keep_ratio).nonzero().squeeze(1))
        return torch.cat(parts)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, num_params) -> (B, dim), in float32."""
        return self.project_kept(vectors[:, self.kept.to(vectors.device)])

    def project_kept(self, kept: torch.Tensor) -> torch.Tensor:
        """The Gaussian part alone, on vectors already cut to the kept coordinates: (B, len(kept)) -> (B, dim)."""
        out = torch.zeros(kept.shape[0], self.dim, device=kept.device)
        generator = _generator(self.seed, _MATRIX_STREAM, kept.device)
        for start in range(0, kept.shape[1], self.chunk):
            rows = kept[:, start : start + self.chunk].float()
            matrix = torch.randn(rows.shape[1], self.dim, device=kept.device, generator=generator)
            out += rows @ matrix
        return out / math.sqrt(self.dim * self.keep_ratio)


# ---- scores and selection --------------------------------------------------------------------------------
def cosine_scores(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of `features` (N, D) with `target` (D,); a zero vector scores 0."""
    norms = features.norm(dim=1) * target.norm()
    return (features @ target) / norms.clamp(min=1e-30)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """1 for the highest score; ties keep the order of the prompts. (N,) -> (N,)."""
    order = torch.sort(-scores, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, len(scores) + 1)
    return rank


def reciprocal_rank_sum(per_set_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Merge one ranking per validation set: sum over sets of 1 / rank. Each (N,) -> (N,)."""
    return sum(1.0 / ranks(scores).double() for scores in per_set_scores)


def top_fraction(scores: torch.Tensor, count: int) -> list[int]:
    """The `count` highest-scoring positions, best first (ties in position order)."""
    return torch.sort(-scores, stable=True).indices[:count].tolist()


def learnability(pass_rates: torch.Tensor) -> torch.Tensor:
    """p (1 - p): highest for prompts solved half the time (Foster and Foerster 2025)."""
    return pass_rates * (1 - pass_rates)


# ---- the offline rollouts store --------------------------------------------------------------------------
class OfflineRollouts:
    """Scored responses of the initial policy, written once under `folder` and read back by every stage and run.

    Each split (the training prompts, each validation set) is a sub-folder of `part-<k>.pt` files, each a buffer of
    whole prompt groups (`prompt_ids`, `prompt_mask`, `response_ids`, `response_mask`, `behaviour_logprobs`,
    `rewards`) written to a temporary name and renamed, so a killed run keeps the parts it finished and samples the
    rest. `manifest.json` records the settings the responses depend on; a store made with other settings is refused.
    """

    def __init__(self, folder: Path, settings: dict, main_process: bool = True):
        self.folder, self.settings, self.main_process = Path(folder), settings, main_process
        manifest = self.folder / "manifest.json"
        if manifest.is_file():
            saved = json.loads(manifest.read_text())
            changed = sorted(key for key in set(saved) | set(settings) if saved.get(key) != settings.get(key))
            if changed:
                raise HarnessError(f"{self.folder} holds offline rollouts made with other settings "
                                   f"({', '.join(changed)}): point offline_dir at a new folder or set them back")
        elif main_process:
            self.folder.mkdir(parents=True, exist_ok=True)
            manifest.write_text(json.dumps(settings, indent=1, sort_keys=True))

    def complete(self, split: str, parts: int) -> bool:
        return all((self.folder / split / f"part-{k}.pt").is_file() for k in range(parts))

    def load(self, split: str, parts: int, sample_part: Callable[[int], dict[str, torch.Tensor]],
             pad_id: int) -> dict[str, torch.Tensor]:
        """All parts of a split merged in order, sampling (via `sample_part(k)`) those not on disk yet."""
        pieces = []
        for k in range(parts):
            path = self.folder / split / f"part-{k}.pt"
            if not path.is_file():
                part = sample_part(k)
                if self.main_process:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(part, path.with_suffix(".tmp"))
                    os.replace(path.with_suffix(".tmp"), path)
                pieces.append(part)
            else:
                pieces.append(torch.load(path, weights_only=True))
        return merge_rollouts(pieces, pad_id)  # rewards are (G,): merged by plain concatenation
