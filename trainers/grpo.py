"""GRPO (Shao et al. 2024, DeepSeekMath Sec. 4.1) with a verifiable 0/1 reward: the base of the RLVR trainers.

For each prompt, G responses from the current policy; reward 1 when the answer (last `\\boxed{}`) equals the gold
under the project's math verifier (`tasks.math.verify`: exact and numeric comparison in-process, anything
symbolic in killable worker processes with a per-answer timeout, so an adversarial answer cannot stall a step);
advantage A_i = r_i - mean(r) over the group, divided by the group's std unless `advantage_std=false`
(Dr. GRPO, Liu et al. 2025). Loss per token: PPO's clipped ratio (clip_low / clip_high, DAPO's asymmetric
clip when they differ) plus kl_coef times the k3 estimate of KL(pi || pi_ref), reduced by `loss_aggregation`
(`sequence_mean` as in the GRPO paper, `token_mean` as DAPO, `dr_grpo`: the sum over B times max_new_tokens),
minus entropy_coef times the mean token entropy. Log-probs are of the logits divided by the sampling temperature
(as TRL and verl). Groups whose responses are all right or all wrong carry no signal: their share is logged.

Why not TRL's `GRPOTrainer`: its generation, reward and update loop owns the batch, while TRAPO (and CROPI) need
to interleave guided micro-groups and per-prompt curricula inside a rollout round, and MiniLLM already shares
this loop's rollout sampler, buffer, checkpoints and exact resume. `tests/trainers/test_grpo.py` shows the loss
equals TRL's on the same batch (loss types `dr_grpo` and `bnpo` = our `token_mean`, `grpo` = `sequence_mean`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.data import hub_rows
from harness.errors import HarnessError
from harness.trainers import register_trainer
from harness.trainers.data import Example, Problem, chunked, encode_prompt, field, read_jsonl
from harness.trainers.on_policy import OnPolicyConfig, OnPolicyTrainer
from harness.trainers.policy_gradient import (
    aggregate,
    clipped_ratio_loss,
    k3_kl,
    masked_mean,
    merge_rollouts,
    token_entropy,
)
from harness.trainers.sampling import Rollout, response_logits, token_logprobs

AGGREGATIONS = ("token_mean", "sequence_mean", "dr_grpo")


# ---- the method, as pure functions of tensors ---------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, group_size: int, std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean of its group) [/ (std of its group + eps)]. rewards: (N,), groups adjacent -> (N,).

    The std is the unbiased one and eps 1e-4, as TRL computes them.
    """
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(1, keepdim=True)
    if std:
        advantages = advantages / (grouped.std(1, keepdim=True) + eps)
    return advantages.reshape(-1)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              clip_low: float, clip_high: float, aggregation: str, max_length: int,
              ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0, kl_ratio_weighted: bool = False,
              entropies: torch.Tensor | None = None, entropy_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The GRPO objective (Eq. 3 of DeepSeekMath, k3 KL) on one batch; all tensors (B, T), advantages per token.

    `kl_ratio_weighted` multiplies the KL term by the ratio pi / pi_old (DeepSeek-V3.2's unbiased KL gradient).
    Returns the loss and the floats to log (clip fraction, KL, entropy).
    """
    losses, clipped = clipped_ratio_loss(logprobs, old_logprobs, advantages, clip_low, clip_high)
    stats = {"clip_fraction": masked_mean(clipped.float(), mask).item()}
    if kl_coef:
        kl = k3_kl(logprobs, ref_logprobs)
        weighted = kl * (logprobs - old_logprobs).exp() if kl_ratio_weighted else kl
        losses = losses + kl_coef * weighted
        stats["kl"] = masked_mean(kl, mask).item()
    loss = aggregate(losses, mask, aggregation, max_length)
    if entropies is not None:
        entropy = masked_mean(entropies, mask)
        loss = loss - entropy_coef * entropy
        stats["entropy"] = entropy.item()
    return loss, stats


# ---- the trainer ---------------------------------------------------------------------------------------------
@dataclass
class GRPOConfig(OnPolicyConfig):
    """Defaults: TRL's GRPO defaults where the paper is silent; `batch_size` counts responses (prompts x G)."""

    lr: float = 1e-6
    schedule: str = "constant"
    weight_decay: float = 0.0
    prompt_field: str = "problem"
    response_field: str = "solution"  # the expert solution (TRAPO's guidance, SFT-then-RL's data); may be absent
    answer_field: str = "answer"  # rows without it take the last \boxed{} of the solution (the MATH layout)
    chat_template: bool = False  # wrap the problem in the model's chat template as one user turn
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 1024
    group_size: int = 8  # G responses per prompt
    rollouts_per_round: int = 16  # prompts per round, all processes together
    batch_size: int = 128  # responses per optimizer step: one update per round by default
    micro_batch_size: int = 8
    ppo_epochs: int = 1  # updates of each response (TRL num_iterations)
    rollout_batch_size: int = 16  # prompts sampled at once on one process
    advantage_std: bool = True  # Dr. GRPO: false
    loss_aggregation: str = "sequence_mean"  # token_mean (DAPO), sequence_mean (GRPO paper), dr_grpo
    clip_low: float = 0.2
    clip_high: float = 0.2  # DAPO: 0.28
    kl_coef: float = 0.0  # the paper: 0.04 (k3 KL to the reference policy)
    kl_ratio_weighted: bool = False  # TRL: true (use_bias_correction_kl, the KL term times pi / pi_old)
    reference: str | None = None  # the frozen reference policy for the KL term; default: the initial model
    entropy_coef: float = 0.0
    reward_timeout: float = 5.0  # seconds per answer for the math verifier; an overrun scores 0
    eval_problems: int = 64  # validation problems whose sampled answers give `valid_reward`
    # Problems from a hub dataset (or a dataset folder) instead of data_dir's JSONL files, with the same field names;
    # splits take datasets' slicing syntax: valid_split "train[-64:]" holds out the last 64 training rows.
    dataset: str | None = None
    dataset_config: str | None = None
    train_split: str = "train"
    valid_split: str = "test"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_aggregation not in AGGREGATIONS:
            raise HarnessError(f"loss_aggregation={self.loss_aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
        if self.group_size < 2:
            raise HarnessError("group_size must be at least 2: the advantage compares responses to one prompt")


@register_trainer("grpo")
class GRPOTrainer(OnPolicyTrainer):
    config_class = GRPOConfig

    @property
    def samples_per_prompt(self) -> int:
        return self.config.group_size

    def load_reference(self):
        return self.load_frozen(self.config.reference or self.config.model) if self.config.kl_coef else None

    # -- data --
    def prepare_data(self) -> None:
        config = self.config
        self.problems = self.read_problems(config.train_file, config.train_split, config.max_train_samples)
        self.valid_problems = self.read_problems(config.valid_file, config.valid_split, config.max_eval_samples)
        # validation loss on the expert solutions, when the data has them
        self.valid_examples = [Example(p.prompt_ids, p.solution_ids) for p in self.valid_problems if p.solution_ids]
        self.plan_rounds(len(self.problems))

    def format_prompt(self, problem: str) -> str:
        from harness.tasks.math import cot_prompt

        text = cot_prompt("problem")({"problem": problem})  # the math suite's prompt, so training matches eval
        if self.config.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text

    def problem_rows(self, file_name: str, split: str) -> tuple[list[dict], str]:
        """The rows of a JSONL file in data_dir, or of a split of `dataset`; and where they came from, for errors."""
        config = self.config
        if config.dataset is None:
            path = Path(config.data_dir) / file_name
            return read_jsonl(path), str(path)
        where = f"dataset {config.dataset} split {split}"
        try:
            return hub_rows(config.dataset, config.dataset_config, split), where
        except Exception as error:  # network, auth, unknown split: all end the same way for the user
            raise HarnessError(f"cannot load {where} ({type(error).__name__}: {error}); check the id, dataset_config "
                               "and the split names (valid_split 'train[-64:]' holds out rows)") from None

    def read_problems(self, file_name: str, split: str, limit: int | None) -> list[Problem]:
        """Prompts with their gold answers (and expert solutions), from data_dir or `dataset`."""
        from harness.metrics.math import extract_answer

        config, tokenizer = self.config, self.tokenizer
        rows, path = self.problem_rows(file_name, split)
        problems = []
        for row in rows[:limit]:
            solution = str(row.get(config.response_field) or "")
            answer = row.get(config.answer_field)
            if answer is None:
                answer, method = extract_answer(solution)
                if method != "boxed":
                    raise HarnessError(f"a row of {path} has no {config.answer_field!r} field and no \\boxed{{}} "
                                       f"answer in {config.response_field!r}: set answer_field")
            prompt_ids = encode_prompt(tokenizer, self.format_prompt(field(row, config.prompt_field, path)),
                                       config.max_prompt_tokens)
            solution_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] \
                if solution else []
            problems.append(Problem(prompt_ids, str(answer), solution_ids))
        return problems

    # -- rollouts --
    def collect(self, prompt_indices: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        mine = [self.problems[i] for i in prompt_indices]
        G = self.config.group_size
        parts = []
        for chunk in chunked(mine, self.config.rollout_batch_size):
            rollout = self.rollouts.sample(self.student, self.completed_steps, [p.prompt_ids for p in chunk], n=G)
            parts.append(self.score(rollout, self.rewards(rollout, [p.answer for p in chunk for _ in range(G)])))
        buffer = merge_rollouts(parts, self.tokenizer.pad_token_id)
        return buffer, self.group_stats(buffer)

    def rewards(self, rollout: Rollout, answers: list[str]) -> torch.Tensor:
        """0/1 per response, verified in one parallel call with a hard timeout per answer."""
        from harness.tasks.math import verify

        texts = self.tokenizer.batch_decode(
            [ids[mask.bool()] for ids, mask in zip(rollout.response_ids, rollout.response_mask, strict=True)],
            skip_special_tokens=True)
        return torch.tensor([s["correct"] for s in verify(answers, texts, timeout=self.config.reward_timeout)])

    def score(self, rollout: Rollout, rewards: torch.Tensor, **masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Advantages per token and, where the update needs them, behaviour and reference log-probs."""
        config = self.config
        mask = rollout.response_mask.float()
        advantages = group_advantages(rewards, config.group_size, config.advantage_std)
        scored = {**vars(rollout), **masks, "advantages": advantages[:, None] * mask,
                  "rewards": rewards[:, None] * mask}
        if self.steps_per_round > 1:  # else the policy at update time is the behaviour policy: no old log-probs
            scored["old_logprobs"] = self.sequence_logprobs(self.student, rollout)
        if self.reference is not None:
            scored["ref_logprobs"] = self.sequence_logprobs(self.reference, rollout)
        return {name: tensor.cpu() for name, tensor in scored.items()}

    def sequence_logprobs(self, model, rollout: Rollout) -> torch.Tensor:
        on_device = rollout.to(self.accelerator.device)
        with self.accelerator.autocast():
            logits = response_logits(model, on_device, self.vocab_size)
        return token_logprobs(logits / self.config.temperature, on_device.response_ids)

    def group_stats(self, buffer: dict[str, torch.Tensor]) -> dict[str, float]:
        mask = buffer["response_mask"].float()
        rewards = buffer["rewards"][:, 0].view(-1, self.config.group_size)
        return {"reward": rewards.mean().item(), "response_length": mask.sum(1).mean().item(),
                "groups_all_correct": (rewards.min(1).values == 1).float().mean().item(),
                "groups_all_wrong": (rewards.max(1).values == 0).float().mean().item()}

    # -- the update --
    def micro_batch_weights(self, groups: list[torch.Tensor]) -> list[float]:
        if self.config.loss_aggregation != "token_mean":
            return super().micro_batch_weights(groups)
        # a token mean over the whole step: each micro-batch weighs by its share of the response tokens
        tokens = [self.buffer["response_mask"][group].sum().item() for group in groups]
        return [count / max(sum(tokens), 1) for count in tokens]

    def policy_logprobs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) log-probs of the responses under the trained model, and the (B, T, V) tempered logits."""
        rollout = Rollout(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
        logits = response_logits(self.model, rollout, self.vocab_size) / self.config.temperature
        return token_logprobs(logits, batch["response_ids"]), logits

    def compute_loss(self, batch):
        config = self.config
        logprobs, logits = self.policy_logprobs(batch)
        loss, stats = grpo_loss(
            logprobs, batch.get("old_logprobs", logprobs.detach()), batch["advantages"],
            batch["response_mask"].float(), clip_low=config.clip_low, clip_high=config.clip_high,
            aggregation=config.loss_aggregation, max_length=config.max_new_tokens,
            ref_logprobs=batch.get("ref_logprobs"), kl_coef=config.kl_coef, kl_ratio_weighted=config.kl_ratio_weighted,
            entropies=token_entropy(logits) if config.entropy_coef else None, entropy_coef=config.entropy_coef)
        return loss, {"pg_loss": loss.item(), **stats}

    # -- evaluation --
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The validation loss on expert solutions (when present) and the mean reward of one sample per problem."""
        results = super().evaluate() if self.valid_examples else {}
        state = self.accelerator
        problems = self.valid_problems[: self.config.eval_problems]
        mine = problems[state.process_index :: state.num_processes]
        total = torch.zeros(2, device=state.device)
        self.student.eval()
        for chunk in chunked(mine, self.config.rollout_batch_size):
            rollout = self.rollouts.sample(self.student, self.completed_steps, [p.prompt_ids for p in chunk])
            rewards = self.rewards(rollout, [p.answer for p in chunk])
            total += torch.tensor([rewards.sum().item(), len(chunk)], device=state.device)
        total = state.reduce(total, "sum")
        results["valid_reward"] = (total[0] / total[1].clamp(min=1)).item()
        return results
