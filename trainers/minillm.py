"""MiniLLM (Gu et al., ICLR 2024): on-policy distillation that minimises the reverse KL(q || p).

Policy gradient over student samples with per-token reward r_t = log p(y_t | y_<t, x) - log q(y_t | y_<t, x)
(Sec. 2.1, Eq. 2), with the paper's three stabilisers (Sec. 2.2), all on by default:
1. single-step decomposition: the expectation of r_t at each step is the exact token-level reverse KL over the
   vocabulary, differentiated directly; only the future uses the Monte-Carlo return (Eq. 3);
2. teacher-mixed sampling: tokens come from (1 - alpha) q + alpha p, alpha = 0.2, corrected by the per-step
   importance weight w_t = q(y_t) / ((1 - alpha) q(y_t) + alpha p(y_t)), truncated to the current step (Eq. 4-5);
3. length normalisation: the future return is the mean, not the sum, of the remaining rewards (Eq. 6).
PPO clipping (eps 0.2) over several epochs per rollout round, plus a language-model loss on pre-training text.
Equation numbers follow the arXiv v4 text.

Paper versus released code (microsoft/LMOps `minillm/`), each an option; the plain config (`configs/minillm.yaml`
and the defaults here) is the paper's form, `configs/minillm_gpt2.yaml` the code's, as its GPT-2 script
`scripts/gpt2/minillm/train_base_xl.sh` runs it:

| option | paper (default) | released code | source |
|---|---|---|---|
| `gamma` | 1 | 0.95 | arguments.py `--gamma` default |
| `return_includes_current` | false (Eq. 6: from t+1) | true | losses.py `_get_advantages_and_returns` |
| `whiten` | false | true, per PPO mini-batch, all processes | losses.py `ppo_loss` -> utils.py `whiten` |
| `whiten_padded` | (no whitening) | true: over the padded response | utils.py `get_global_statistics` |
| `weight_in_ratio` | true | true: clip(w_t * ratio) | losses.py `_pg_loss`, `ratio = ratio * w` |
| `single_step_weighted` | true (Eq. 5) | false | losses.py `_reg_loss` has no w |
| `pretrain_kd_ratio` | 0 (LM loss) | 0.5 (0.5 LM + 0.5 KD) | script `--kd-ratio 0.5`; losses.py `pt_loss` |
| `reward_scale` | 1 | 2 | script `--reward-scaling 0.5` (divides); sampler.py |
| `reward_clip` | none | 100 | script `--cliprange-reward 100`; sampler.py |
| `long_prompts` | drop | drop | tools/process_data_dolly.py skips prompts over the limit |
| `eval_rollouts` | 1000 | 1000, every 100 steps | script `--dev-num 1000`; trainer.py `evaluate_ppo` |

Both keep the student in eval mode (no dropout) during its updates, as the code does (utils.py `get_model` calls
`model.eval()` and nothing switches it back), and both choose the checkpoint by sampled validation ROUGE-L.
Deviations: the importance weight and old log-probs come from the behaviour policy and are held fixed across PPO
epochs; the code recomputes the student's log-probs in a second pass before the first update (the same weights).

Rollouts come from the shared rollout sampler (`rollouts.py`): the torch loop, or with `rollout_backend=vllm`
vLLM engines serving the student and the teacher, mixed token by token from the same distribution
(`engine_sampling.py`); log-probs, weights and rewards are computed by the trainer's own models either way. The
round / buffer / PPO-epoch schedule is the shared one of `on_policy.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.metrics.text import rouge_l
from harness.trainers import register_trainer
from harness.trainers.data import batch_indices, chunked, field, read_jsonl, shard, text_chunks
from harness.trainers.engine_sampling import EngineSampler
from harness.trainers.kd import kd_loss
from harness.trainers.on_policy import OnPolicyConfig, OnPolicyTrainer
from harness.trainers.policy_gradient import masked_mean, merge_rollouts, ppo_clipped_loss, whiten_minibatch
from harness.trainers.sampling import Rollout, response_logits, token_logprobs
from harness.trainers.sft import cross_entropy


# ---- the loss terms, as pure functions of tensors ---------------------------------------------------------
def token_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(q(.|y_<t) || p(.|y_<t)) at every position, exactly over the vocabulary (Eq. 3, single-step part).

    This is -E_{y_t ~ q}[r_t]. logits: (B, T, V) -> (B, T); differentiable in the student's logits.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def teacher_mixed_weights(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, alpha: float) -> torch.Tensor:
    """w_t = q(y_t) / ((1 - alpha) q(y_t) + alpha p(y_t)), the per-step importance weight (Eq. 5).

    Inputs: (B, T) log-probs of the sampled tokens under q and p. Computed in log space; alpha = 0 gives 1.
    """
    if alpha <= 0:
        return torch.ones_like(student_logprobs)
    log_mixture = torch.logaddexp(student_logprobs + math.log1p(-alpha), teacher_logprobs + math.log(alpha)) \
        if alpha < 1 else teacher_logprobs
    return (student_logprobs - log_mixture).exp()


def token_rewards(
    teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor, scale: float = 1.0, clip: float | None = None
) -> torch.Tensor:
    """r_t = scale * (log p(y_t) - log q(y_t)), optionally clipped to +-clip. (B, T) -> (B, T)."""
    rewards = scale * (teacher_logprobs - student_logprobs)
    return rewards.clamp(-clip, clip) if clip is not None else rewards


def length_normalised_return(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    include_current: bool = False,
    normalise: bool = True,
) -> torch.Tensor:
    """The future return of each step (Eq. 6): R_t = sum_{t' >= s} gamma^(t'-s) r_t' / (number of t' >= s).

    s = t + 1 in the paper (the current token is covered by the single-step term), s = t with
    `include_current`. Without `normalise` the sum is returned. rewards, mask: (B, T) -> (B, T); padding -> 0.
    """
    length = rewards.shape[1]
    index = torch.arange(length, device=rewards.device)
    offset = (index[None, :] - index[:, None]).to(rewards.dtype)  # (T, T): t' - t
    discount = torch.where(offset >= 0, gamma ** offset.clamp(min=0), torch.zeros_like(offset))
    mask = mask.to(rewards.dtype)
    totals = (rewards * mask) @ discount.T  # (B, T): discounted sum from t on
    counts = mask @ (offset >= 0).to(rewards.dtype).T
    if not include_current:
        totals = F.pad(totals[:, 1:], (0, 1))
        counts = F.pad(counts[:, 1:], (0, 1))
    returns = totals / counts.clamp(min=1) if normalise else totals
    return returns * mask


# ---- the trainer ----------------------------------------------------------------------------------------
@dataclass
class MiniLLMConfig(OnPolicyConfig):
    """Defaults are the paper's GPT-2 settings; `batch_size` is the PPO mini-batch (64)."""

    lr: float = 5e-6
    schedule: str = "constant"
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-6
    batch_size: int = 64
    max_steps: int | None = 5000
    eval_every: int = 100
    save_every: int = 500
    mix_alpha: float = 0.2  # teacher share of the sampling mixture; 0 samples from the student alone
    clip_eps: float = 0.2
    length_normalise: bool = True
    gamma: float = 1.0  # code: 0.95
    return_includes_current: bool = False  # code: true
    whiten: bool = False  # code: true (per PPO mini-batch, over all processes)
    whiten_padded: bool = True  # code: true (statistics over the padded response); false: response tokens only
    weight_in_ratio: bool = True  # code: true (w_t inside the clipped ratio); false: w_t scales the advantage
    single_step_weighted: bool = True  # code: false (drops w_t from the single-step term)
    reward_scale: float = 1.0  # code: 2.0
    reward_clip: float | None = None  # code: 100
    pretrain_file: str | None = "pretrain.jsonl"  # {"text"} rows in data_dir; null or pretrain_coef 0: none
    pretrain_seq_len: int = 512
    pretrain_batch_size: int = 64  # pre-training sequences per optimizer step, all processes together
    pretrain_coef: float = 1.0
    pretrain_kd_ratio: float = 0.0  # code: 0.5 (0.5 LM + 0.5 word-level KD on pre-training text)
    # validation prompts sampled from the student alone (no n-gram ban) at every evaluation: their ROUGE-L against
    # the validation responses (`valid_rougeL`, which chooses the checkpoint) and their reverse KL to the teacher
    eval_rollouts: int = 1000  # code: --dev-num 1000
    long_prompts: str = "drop"  # training prompts over max_prompt_tokens: drop (code's data preparation) or keep_tail

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.long_prompts not in ("drop", "keep_tail"):
            raise HarnessError(f"long_prompts={self.long_prompts!r}: choose drop or keep_tail")


@register_trainer("minillm")
class MiniLLMTrainer(OnPolicyTrainer):
    config_class = MiniLLMConfig
    needs_teacher = True
    dropout = False  # the released code never leaves eval mode (utils.py `get_model` calls `model.eval()`)
    selection_metric = ("valid_rougeL", False)  # the reference picks its checkpoint by validation ROUGE-L

    def start_rollouts(self, mixer: str | None = None):
        return super().start_rollouts(self.config.teacher if self.config.mix_alpha > 0 else None)

    @property
    def engines(self) -> EngineSampler | None:
        """The vLLM engines, when rollout_backend resolves to vllm."""
        return self.rollouts.engines if self.rollouts is not None else None

    def prepare_data(self) -> None:
        config = self.config
        self.prompts = self.read_prompts(drop_long=config.long_prompts == "drop")  # targets: the student's samples
        if not self.prompts:
            raise HarnessError(f"every training prompt is over max_prompt_tokens={config.max_prompt_tokens}: "
                               "raise it or set long_prompts=keep_tail")
        self.valid_examples = self.read_examples(config.valid_file, config.max_eval_samples)
        valid = Path(config.data_dir) / config.valid_file
        self.valid_references = [field(row, config.response_field, valid)
                                 for row in read_jsonl(valid)[: config.max_eval_samples]]
        self.pretrain_chunks = []
        if config.pretrain_file and config.pretrain_batch_size > 0 and config.pretrain_coef > 0:
            pretrain = config.data_dir / config.pretrain_file
            texts = [field(row, "text", pretrain) for row in read_jsonl(pretrain)]
            self.pretrain_chunks = text_chunks(self.tokenizer, texts, config.pretrain_seq_len)
        self.plan_rounds(len(self.prompts))

    # -- rollouts --
    def collect(self, prompt_indices: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        mine = [self.prompts[i] for i in prompt_indices]
        parts = [self.score(self.sample(part)) for part in chunked(mine, self.config.rollout_batch_size)]
        buffer = merge_rollouts(parts, self.tokenizer.pad_token_id)
        mask = buffer["response_mask"].float()
        return buffer, {"response_length": mask.sum(1).mean().item(),
                        "rollout_reverse_kl": buffer["seq_reverse_kl"].mean().item()}

    def sample(self, prompts: list[list[int]], mix_alpha: float | None = None) -> Rollout:
        """Student samples of `prompts`, mixed with the teacher at `mix_alpha` (default: the configured one)."""
        mix_alpha = self.config.mix_alpha if mix_alpha is None else mix_alpha
        return self.rollouts.sample(self.student, self.completed_steps, prompts, mixer=self.teacher,
                                    mix_alpha=mix_alpha)

    def score(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Behaviour log-probs, importance weights, rewards and returns of one sampled batch."""
        config, on_device = self.config, rollout.to(self.accelerator.device)
        with self.accelerator.autocast():
            student_logits = response_logits(self.student, on_device, self.vocab_size)
            teacher_logits = response_logits(self.teacher, on_device, self.vocab_size)
        ids, mask = on_device.response_ids, on_device.response_mask.float()
        old, teacher = token_logprobs(student_logits, ids), token_logprobs(teacher_logits, ids)
        rewards = token_rewards(teacher, old, config.reward_scale, config.reward_clip)
        returns = length_normalised_return(rewards, mask, config.gamma, config.return_includes_current,
                                           config.length_normalise)
        return {**{k: v.cpu() for k, v in vars(rollout).items()}, "old_logprobs": old.cpu(),
                "weights": teacher_mixed_weights(old, teacher, config.mix_alpha).cpu(), "returns": returns.cpu(),
                "seq_reverse_kl": ((old - teacher) * mask).sum(1).cpu()}

    # -- the step's micro-batches: the scheduled rollout rows, then pre-training text --
    def micro_batches(self, step: int) -> list[dict]:
        return super().micro_batches(step) + self.pretrain_batches(step)

    def prepare_minibatch(self, minibatch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**minibatch, "advantages": self.advantages(minibatch)}

    def advantages(self, minibatch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The returns of this step's PPO mini-batch (this process's rows), whitened over the whole mini-batch."""
        config, returns = self.config, minibatch["returns"]
        if config.whiten:
            returns = whiten_minibatch(returns, minibatch["response_mask"], config.max_new_tokens
                                       if config.whiten_padded else None,
                                       lambda t: self.accelerator.reduce(t.to(self.accelerator.device), "sum").cpu())
        return returns if config.weight_in_ratio else minibatch["weights"] * returns

    def pretrain_batches(self, step: int) -> list[dict]:
        config, state = self.config, self.accelerator
        if not self.pretrain_chunks:
            return []
        rows = batch_indices(len(self.pretrain_chunks), config.pretrain_batch_size, step - 1, config.seed + 1)
        mine = shard(rows, state.process_index, state.num_processes)
        batches = []
        for part in chunked(mine, config.micro_batch_size):
            ids = torch.tensor([self.pretrain_chunks[i] for i in part])
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
            batches.append({**self.to_device(batch), "loss_weight": config.pretrain_coef * len(part) / len(mine)})
        return batches

    # -- the loss --
    def compute_loss(self, batch):
        if "labels" in batch:
            return self.pretrain_loss(batch)
        config = self.config
        rollout = Rollout(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
        logits = response_logits(self.model, rollout, self.vocab_size)  # (B, T, V)
        with torch.no_grad(), self.accelerator.autocast():
            teacher_logits = response_logits(self.teacher, rollout, self.vocab_size)
        mask = batch["response_mask"].float()
        logprobs = token_logprobs(logits, batch["response_ids"])
        long_term, clipped = ppo_clipped_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask,
                                              config.clip_eps, batch["weights"] if config.weight_in_ratio else None)
        reverse_kl = token_reverse_kl(logits, teacher_logits)  # (B, T)
        weights = batch["weights"] if config.single_step_weighted else torch.ones_like(mask)
        single_step = masked_mean(weights * reverse_kl, mask)
        loss = long_term + single_step
        return loss, {"pg_loss": long_term.item(), "single_step_loss": single_step.item(),
                      "reverse_kl": masked_mean(reverse_kl, mask).item(), "clip_fraction": clipped.item()}

    def pretrain_loss(self, batch):
        logits = self.student_logits(batch)
        if self.config.pretrain_kd_ratio > 0:
            loss, ce, soft = kd_loss(logits, self.teacher_logits(batch), batch["labels"],
                                     self.config.pretrain_kd_ratio)
            return loss, {"pt_loss": loss.item(), "pt_lm_loss": ce.item(), "pt_kd_loss": soft.item()}
        loss = cross_entropy(logits, batch["labels"])
        return loss, {"pt_loss": loss.item()}

    # -- evaluation --
    def evaluate(self) -> dict[str, float]:
        results = super().evaluate()
        count = self.config.eval_rollouts
        prompts = [example.prompt_ids for example in self.valid_examples[:count]]
        return {**results, **validation_samples(self, prompts, self.valid_references[:count])}


@torch.no_grad()
def validation_samples(trainer: MiniLLMTrainer, prompts: list[list[int]],
                       references: list[str | list[str]] | None = None) -> dict[str, float]:
    """Pure student samples (alpha 0) of `prompts`, scored two ways: `valid_reverse_kl`, the mean over tokens of the
    exact KL(q || p) along them, and, given `references`, `valid_rougeL`, their mean ROUGE-L F (x100) against
    them (the reference code's `evaluate_ppo`: sampled with the training settings, no n-gram ban)."""
    state = trainer.accelerator
    mine = shard(list(range(len(prompts))), state.process_index, state.num_processes)
    totals = torch.zeros(4, device=state.device)  # KL sum, tokens, ROUGE-L sum, responses
    trainer.student.eval()
    for part in chunked(mine, trainer.config.rollout_batch_size):
        rollout = trainer.sample([prompts[i] for i in part], mix_alpha=0.0).to(state.device)
        with state.autocast():
            kl = token_reverse_kl(response_logits(trainer.student, rollout, trainer.vocab_size),
                                  response_logits(trainer.teacher, rollout, trainer.vocab_size))
        mask = rollout.response_mask.float()
        totals[:2] += torch.stack([(kl * mask).sum(), mask.sum()])
        if references is not None:
            texts = trainer.tokenizer.batch_decode(rollout.response_ids.masked_fill(~rollout.response_mask.bool(),
                                                   trainer.tokenizer.pad_token_id), skip_special_tokens=True)
            scores = [rouge_l(text.strip(), [references[i]] if isinstance(references[i], str) else references[i])
                      for i, text in zip(part, texts)]
            totals[2:] += torch.tensor([100.0 * sum(scores), len(scores)], device=state.device)
    totals = state.reduce(totals, "sum")
    results = {"valid_reverse_kl": (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan")}
    if references is not None:
        results["valid_rougeL"] = (totals[2] / totals[3]).item() if totals[3] > 0 else float("nan")
    return results


def measure_reverse_kl(trainer: MiniLLMTrainer, prompts: list[list[int]]) -> float:
    """Mean over tokens of the exact KL(q || p) along pure student samples (alpha 0) of `prompts`."""
    return validation_samples(trainer, prompts)["valid_reverse_kl"]
