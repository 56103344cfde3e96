"""TRAPO (Su et al. 2025): SFT and RL interleaved within each training instance, guided by the expert solution.

Per prompt, 8 responses in four micro-groups of 4, 2, 1 and 1. Before micro-groups 2, 3 and 4, the correct
answers so far are compared with 2 (of 4), 4 (of 6) and 7 (of 7): below it, the micro-group continues from a
prefix of the expert solution of 25%, 50% and 100% (`next_prefix_fraction`); otherwise it samples unguided. The
cut snaps to just after the first blank line past the nominal point if that lies within +30% of the solution's
tokens, else stays at the nominal point (`prefix_cut`). Expert-prefix tokens get the Trust-Region SFT loss
-p / max(sg(p), alpha), alpha = 0.1 (`trust_region_sft_loss`): the SFT gradient where the policy already gives
the token some probability, attenuated by p / alpha where it does not. Tokens the policy generated get the RL
loss with the advantage r - mean(r) over all 8 responses. RL part as released: no std division, no clipping
(`loss_remove_clip`), no KL, entropy bonus 0.001, every token's loss summed and divided by B times the maximum
response length (`loss_remove_token_mean`).

Paper versus released code (Su-my/TRAPO, verl `trapo_src`), each an option, default = paper:
`trsft_second_sample_only` (code: true) applies TrSFT to only the second of micro-group 2's two guided responses,
the first one's prefix tokens then get no loss. The 100% prefix is the whole solution and eos: nothing is
sampled after it. Not modelled: the released trainer reads its expert traces from two hint columns depending on
the micro-group; here one `solution` field serves all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.trainers import register_trainer
from harness.trainers.data import Problem, chunked
from harness.trainers.grpo import GRPOConfig, GRPOTrainer
from harness.trainers.policy_gradient import aggregate, clipped_ratio_loss, masked_mean, merge_rollouts, token_entropy
from harness.trainers.sampling import pack_rollout

MICRO_GROUPS = (4, 2, 1, 1)
# before micro-group k + 2: (responses seen, correct answers needed, prefix fraction when fewer)
THRESHOLDS = ((4, 2, 0.25), (6, 4, 0.5), (7, 7, 1.0))


# ---- the method, as pure functions ---------------------------------------------------------------------------
def next_prefix_fraction(correct: int, seen: int) -> float:
    """The expert-prefix fraction of the next micro-group, given `correct` answers among the `seen` responses so
    far: 0.25 below 2 of 4, 0.5 below 4 of 6, 1.0 below 7 of 7, else 0.0 (sample unguided)."""
    for responses, needed, fraction in THRESHOLDS:
        if seen == responses:
            return fraction if correct < needed else 0.0
    raise ValueError(f"a micro-group starts after 4, 6 or 7 responses, not {seen}")


def prefix_cut(blank_line_ends: Sequence[int], length: int, fraction: float, snap: float = 0.3) -> int:
    """How many tokens of a `length`-token solution the prefix keeps.

    Nominal cut int(length * fraction); it moves to the end of the first blank line strictly after it if that end
    lies below length * (fraction + snap). `blank_line_ends` are token counts after which the text ends in a
    blank line, ascending. A fraction of 1 keeps everything.
    """
    if fraction >= 1:
        return length
    nominal = int(length * fraction)
    for end in blank_line_ends:
        if end - 1 > nominal:  # the blank line's last token lies past the nominal cut
            return end if end - 1 < length * (fraction + snap) else nominal
    return nominal


def blank_line_ends(tokenizer, ids: Sequence[int]) -> list[int]:
    """Token counts k such that the text of ids[:k] ends with a blank line (its last token holds a newline)."""
    ends, text = [], ""
    for index, token in enumerate(ids):
        piece = tokenizer.decode([token])
        text = (text + piece)[-2:]  # only the end can make a blank line
        if "\n" in piece and text == "\n\n":
            ends.append(index + 1)
    return ends


def trust_region_sft_loss(logprobs: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """TrSFT per token: -p / max(sg(p), alpha), p = exp(logprobs); not reduced. (B, T) -> (B, T).

    Its gradient with respect to log p is -1 where p >= alpha (plain SFT) and -p / alpha below (attenuated).
    """
    p = logprobs.exp()
    return -p / p.detach().clamp(min=alpha)


# ---- the trainer ---------------------------------------------------------------------------------------------
@dataclass
class TRAPOConfig(GRPOConfig):
    """Defaults as released: Qwen2.5-Math-7B on OpenR1-Math-46k, 8 prompts x 8 responses per update, lr 1e-6."""

    group_size: int = 8  # fixed by the micro-groups 4, 2, 1, 1
    rollouts_per_round: int = 8
    batch_size: int = 64
    max_new_tokens: int = 8192
    advantage_std: bool = False  # code: grpo_use_std=False
    loss_aggregation: str = "dr_grpo"  # code: loss_remove_token_mean (sum / max response length)
    clip: bool = False  # code: loss_remove_clip=True
    entropy_coef: float = 0.001
    trsft_alpha: float = 0.1
    prefix_snap: float = 0.3  # the cut may move forward to a blank line within this share of the solution
    trsft_second_sample_only: bool = False  # code: true (micro-group 2's first guided response gets no TrSFT)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size != sum(MICRO_GROUPS):
            raise HarnessError(f"TRAPO samples {sum(MICRO_GROUPS)} responses per prompt (micro-groups 4, 2, 1, 1): "
                               "leave group_size at 8")
        if self.kl_coef:
            raise HarnessError("TRAPO has no KL term: leave kl_coef at 0")


@register_trainer("trapo")
class TRAPOTrainer(GRPOTrainer):
    config_class = TRAPOConfig

    def prepare_data(self) -> None:
        super().prepare_data()
        if not all(problem.solution_ids for problem in self.problems):
            raise HarnessError(f"TRAPO needs an expert solution in every training row ({self.config.response_field!r}"
                               " field): set response_field")

    def expert_prefix(self, problem: Problem, fraction: float) -> list[int]:
        solution = problem.solution_ids  # ends with eos: a 100% prefix is the whole response
        text_ids = solution[:-1]
        cut = prefix_cut(blank_line_ends(self.tokenizer, text_ids), len(text_ids), fraction, self.config.prefix_snap)
        return solution if fraction >= 1 else text_ids[:cut]

    def collect(self, prompt_indices: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        mine = [self.problems[i] for i in prompt_indices]
        parts, guided = [], []
        for chunk in chunked(mine, self.config.rollout_batch_size):
            part, fractions = self.guided_group(chunk)
            parts.append(part)
            guided += fractions
        buffer = merge_rollouts(parts, self.tokenizer.pad_token_id)
        stats = self.group_stats(buffer)
        for fraction in (0.25, 0.5, 1.0):
            stats[f"guided_{fraction:g}"] = sum(f == fraction for f in guided) / max(len(guided), 1)
        return buffer, stats

    def guided_group(self, problems: list[Problem]) -> tuple[dict[str, torch.Tensor], list[float]]:
        """The 8 scored responses of each problem, micro-group by micro-group; rows prompt-major (groups adjacent).

        Also returns the prefix fraction chosen before each guided micro-group (0 for unguided ones).
        """
        drawn: list[list[tuple[list[int], int, bool, float]]] = [[] for _ in problems]  # ids, forced, TrSFT, r
        fractions: list[float] = []
        for index, size in enumerate(MICRO_GROUPS):
            chosen = [0.0 if index == 0 else next_prefix_fraction(int(sum(r for *_, r in seen)), len(seen))
                      for seen in drawn]
            fractions += chosen if index else []
            prefixes = [self.expert_prefix(p, f) if f else [] for p, f in zip(problems, chosen, strict=True)]
            rows = [i for i in range(len(problems)) for _ in range(size)]
            rollout, forced = self.rollouts.continue_prefixes(self.student, self.completed_steps,
                                                              [problems[i].prompt_ids for i in rows],
                                                              [prefixes[i] for i in rows])
            rewards = self.rewards(rollout, [problems[i].answer for i in rows]).tolist()
            for row, i in enumerate(rows):
                first_of_pair = index == 1 and row % size == 0
                trsft = bool(prefixes[i]) and not (self.config.trsft_second_sample_only and first_of_pair)
                ids = rollout.response_ids[row][rollout.response_mask[row].bool()].tolist()
                drawn[i].append((ids, int(forced[row].sum()), trsft, rewards[row]))
        flat = [(problem, response) for problem, group in zip(problems, drawn, strict=True) for response in group]
        rollout = pack_rollout([p.prompt_ids for p, _ in flat], [r[0] for _, r in flat], self.tokenizer.pad_token_id)
        forced = torch.zeros_like(rollout.response_mask)
        trsft = torch.zeros_like(rollout.response_mask)
        for row, (_, (_, length, on, _)) in enumerate(flat):
            forced[row, :length] = 1
            trsft[row, :length] = int(on)
        rewards = torch.tensor([r[3] for _, r in flat])
        return self.score(rollout, rewards, forced_mask=forced, trsft_mask=trsft), fractions

    # -- the update --
    def compute_loss(self, batch):
        config = self.config
        logprobs, logits = self.policy_logprobs(batch)
        mask = batch["response_mask"].float()
        forced, trsft = batch["forced_mask"].float(), batch["trsft_mask"].float()
        old = batch.get("old_logprobs", logprobs.detach())
        if config.clip:
            rl = clipped_ratio_loss(logprobs, old, batch["advantages"], config.clip_low, config.clip_high)[0]
        else:
            rl = -batch["advantages"] * (logprobs - old).exp()  # unclipped, as released
        sft = trust_region_sft_loss(logprobs, config.trsft_alpha)
        losses = rl * (1 - forced) + sft * trsft  # forced tokens without TrSFT contribute nothing
        loss = aggregate(losses, mask, config.loss_aggregation, config.max_new_tokens)
        entropy = masked_mean(token_entropy(logits), mask)
        loss = loss - config.entropy_coef * entropy
        generated = mask * (1 - forced)
        return loss, {"pg_loss": masked_mean(rl, generated).item(),
                      "trsft_loss": masked_mean(sft, trsft * mask).item() if trsft.any() else 0.0,
                      "entropy": entropy.item(), "forced_fraction": masked_mean(forced, mask).item()}
