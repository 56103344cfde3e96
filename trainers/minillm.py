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

Rollouts come from the shared torch sampling loop, or with `rollout_backend=vllm` from vLLM engines serving the
student and the teacher, mixed token by token from the same distribution (`engine_sampling.py`); log-probs,
weights and rewards are computed by the trainer's own models either way.
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
from harness.trainers.base import TrainConfig, Trainer
from harness.trainers.data import (
    batch_indices,
    chunked,
    field,
    left_pad,
    read_jsonl,
    shard,
    text_chunks,
)
from harness.trainers.engine_sampling import EngineSampler
from harness.trainers.kd import kd_loss
from harness.trainers.sampling import Rollout, response_logits, sample, token_logprobs
from harness.trainers.sft import cross_entropy


# ---- the loss terms, as pure functions of tensors ---------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


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


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (the released code's advantage whitening)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


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


def ppo_clipped_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate for the long-term part (Sec. 2.3); returns (loss, fraction of clipped tokens).

    loss = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)), rho_t = w_t q_theta(y_t) / q_old(y_t).
    `weights` (w_t, constants) enter the clipped ratio as in the released code (losses.py `_pg_loss`:
    `ratio = ratio * w` before the clamp); None means w_t = 1. All inputs (B, T); advantages are constants.
    """
    ratio = (logprobs - old_logprobs).exp()
    if weights is not None:
        ratio = ratio * weights
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


# ---- the trainer ----------------------------------------------------------------------------------------
@dataclass
class MiniLLMConfig(TrainConfig):
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
    rollouts_per_round: int = 256  # prompts sampled per round, all processes together
    ppo_epochs: int = 4  # passes over each round's rollouts
    rollout_batch_size: int = 32  # prompts sampled at once on one process
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
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
    pretrain_file: str | None = "pretrain.jsonl"  # rows {"text": ...} in data_dir; null: no pre-training term
    pretrain_seq_len: int = 512
    pretrain_batch_size: int = 64  # pre-training sequences per optimizer step, all processes together
    pretrain_coef: float = 1.0
    pretrain_kd_ratio: float = 0.0  # code: 0.5 (0.5 LM + 0.5 word-level KD on pre-training text)
    # validation prompts sampled from the student alone (no n-gram ban) at every evaluation: their ROUGE-L against
    # the validation responses (`valid_rougeL`, which chooses the checkpoint) and their reverse KL to the teacher
    eval_rollouts: int = 1000  # code: --dev-num 1000
    long_prompts: str = "drop"  # training prompts over max_prompt_tokens: drop (code's data preparation) or keep_tail
    # "torch": the shared sampling loop on the trained models. "vllm": vLLM engines for the student (weights
    # pushed after every optimizer step that changed them) and, when mix_alpha > 0, the teacher, in every
    # process on its own GPU. "auto": vllm when it is installed and a GPU is present, else torch.
    rollout_backend: str = "auto"
    rollout_gpu_memory_utilization: float = 0.25  # each engine's share of the GPU's memory (ignored on CPUs)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rollout_backend not in ("torch", "vllm", "auto"):
            raise HarnessError(f"rollout_backend={self.rollout_backend!r}: choose torch, vllm or auto")
        if self.long_prompts not in ("drop", "keep_tail"):
            raise HarnessError(f"long_prompts={self.long_prompts!r}: choose drop or keep_tail")


@register_trainer("minillm")
class MiniLLMTrainer(Trainer):
    config_class = MiniLLMConfig
    needs_teacher = True
    dropout = False  # the released code never leaves eval mode (utils.py `get_model` calls `model.eval()`)
    selection_metric = ("valid_rougeL", False)  # the reference picks its checkpoint by validation ROUGE-L
    engines: EngineSampler | None = None  # vLLM rollouts, when rollout_backend resolves to vllm

    def setup(self) -> None:
        super().setup()
        self.engines = self.start_engines()
        # each process samples its own prompts with its own engines: independent draws per process
        self.engine_generator = torch.Generator().manual_seed(self.config.seed + self.accelerator.process_index)

    def start_engines(self) -> EngineSampler | None:
        """This process's vLLM engines, when rollout_backend asks for them (or `auto` finds vLLM and a GPU)."""
        from harness.backends import resolve_backend_name

        config = self.config
        if resolve_backend_name(config.rollout_backend) != "vllm":
            return None
        if config.mix_alpha > 0 and config.top_p < 1:
            raise HarnessError("rollout_backend=vllm mixes the teacher in only with top_p=1: use torch")
        if not 0 < config.temperature <= 2:
            raise HarnessError(f"vLLM samples at temperatures up to 2, not {config.temperature}: use torch")
        options = {}
        if torch.cuda.is_available():
            options["gpu_memory_utilization"] = config.rollout_gpu_memory_utilization
        return EngineSampler(config.model, config.teacher if config.mix_alpha > 0 else None, self.vocab_size,
                             config.max_prompt_tokens + config.max_new_tokens, config.seed,
                             device=self.accelerator.device, **options)

    def run(self) -> list[Path]:
        try:
            return super().run()
        finally:
            if self.engines is not None:
                self.engines.close()

    def prepare_data(self) -> None:
        config = self.config
        if config.rollouts_per_round % config.batch_size:
            raise HarnessError("rollouts_per_round must be a multiple of batch_size (the PPO mini-batch)")
        self.prompts = self.read_prompts(drop_long=config.long_prompts == "drop")  # targets: the student's samples
        if not self.prompts:
            raise HarnessError(f"every training prompt is over max_prompt_tokens={config.max_prompt_tokens}: "
                               "raise it or set long_prompts=keep_tail")
        self.valid_examples = self.read_examples(config.valid_file, config.max_eval_samples)
        valid = Path(config.data_dir) / config.valid_file
        self.valid_references = [field(row, config.response_field, valid)
                                 for row in read_jsonl(valid)[: config.max_eval_samples]]
        self.pretrain_chunks = []
        if config.pretrain_file and config.pretrain_batch_size > 0:
            pretrain = config.data_dir / config.pretrain_file
            texts = [field(row, "text", pretrain) for row in read_jsonl(pretrain)]
            self.pretrain_chunks = text_chunks(self.tokenizer, texts, config.pretrain_seq_len)
        self.steps_per_round = config.ppo_epochs * config.rollouts_per_round // config.batch_size
        rounds = config.epochs * max(1, len(self.prompts) // config.rollouts_per_round)
        self.total_steps = config.max_steps or rounds * self.steps_per_round
        self.buffer: dict[str, torch.Tensor] = {}
        self.pending: list[list[torch.Tensor]] = []  # per coming step: index tensors of its micro-batches
        self.round_stats: dict[str, float] = {}

    # -- rollouts --
    @torch.no_grad()
    def rollout_round(self, round_index: int) -> None:
        """Sample this process's share of the round, score it once, and schedule the PPO epochs over it."""
        config, state = self.config, self.accelerator
        chosen = batch_indices(len(self.prompts), config.rollouts_per_round, round_index, config.seed)
        mine = [self.prompts[i] for i in shard(chosen, state.process_index, state.num_processes)]
        self.student.eval()
        parts = [self.score(self.sample(part)) for part in chunked(mine, config.rollout_batch_size)]
        buffer = merge_rollouts(parts, self.tokenizer.pad_token_id)
        mask = buffer["response_mask"].float()
        self.buffer = buffer
        self.round_stats = {"response_length": mask.sum(1).mean().item(),
                            "rollout_reverse_kl": buffer["seq_reverse_kl"].mean().item()}
        per_process = config.batch_size // state.num_processes
        self.pending = []
        for _ in range(config.ppo_epochs):
            order = torch.randperm(len(mask))
            for start in range(0, len(order), per_process):
                self.pending.append(list(order[start : start + per_process].split(config.micro_batch_size)))

    def sample(self, prompts: list[list[int]], mix_alpha: float | None = None) -> Rollout:
        """Student samples of `prompts`, mixed with the teacher at `mix_alpha` (default: the configured one)."""
        config, device = self.config, self.accelerator.device
        mix_alpha = config.mix_alpha if mix_alpha is None else mix_alpha
        if self.engines is not None:
            self.engines.load_weights(self.student, self.completed_steps)
            return self.engines.sample(prompts, generator=self.engine_generator, eos_id=self.tokenizer.eos_token_id,
                                       pad_id=self.tokenizer.pad_token_id, max_new_tokens=config.max_new_tokens,
                                       temperature=config.temperature, top_p=config.top_p, mix_alpha=mix_alpha)
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        with self.accelerator.autocast():
            return sample(self.student, ids.to(device), mask.to(device), eos_id=self.tokenizer.eos_token_id,
                          pad_id=self.tokenizer.pad_token_id, vocab_size=self.vocab_size,
                          max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                          mixer=self.teacher if mix_alpha > 0 else None, mix_alpha=mix_alpha)

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

    # -- the step's micro-batches --
    def micro_batches(self, step: int) -> list[dict]:
        if not self.pending:
            self.rollout_round((step - 1) // self.steps_per_round)
        groups = self.pending.pop(0)
        rows = torch.cat(groups)
        minibatch = {name: tensor[rows] for name, tensor in self.buffer.items()}
        minibatch["advantages"] = self.advantages(minibatch)
        ends = torch.tensor([len(group) for group in groups]).cumsum(0).tolist()
        batches = [{**self.to_device(trim(minibatch, torch.arange(end - len(group), end))),
                    "loss_weight": len(group) / len(rows)} for group, end in zip(groups, ends)]
        return batches + self.pretrain_batches(step)

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

    def step_stats(self) -> dict[str, float]:
        return dict(self.round_stats)

    # -- evaluation and resume --
    def evaluate(self) -> dict[str, float]:
        results = super().evaluate()
        count = self.config.eval_rollouts
        prompts = [example.prompt_ids for example in self.valid_examples[:count]]
        return {**results, **validation_samples(self, prompts, self.valid_references[:count])}

    def extra_state(self) -> dict:
        return {"buffer": self.buffer, "pending": self.pending, "round_stats": self.round_stats,
                "engine_generator": self.engine_generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.buffer, self.pending, self.round_stats = state["buffer"], state["pending"], state["round_stats"]
        if "engine_generator" in state:  # absent from checkpoints written before vLLM rollouts existed
            self.engine_generator.set_state(state["engine_generator"])


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
