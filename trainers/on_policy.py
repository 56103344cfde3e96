"""The on-policy training schedule shared by MiniLLM, GRPO and TRAPO: rounds of rollouts, then several passes.

Each round samples `rollouts_per_round` prompts (all processes together; each process samples its own share with
its own `RolloutSampler`), scores them once into a buffer (`collect`, the method's part), and schedules
`ppo_epochs` shuffled passes over the buffer in optimizer steps of `batch_size` rows. A round's buffer and
its remaining steps are method state, so a run resumed mid-round continues with the same rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.backends.base import SamplingSettings
from harness.errors import HarnessError
from harness.trainers.base import TrainConfig, Trainer
from harness.trainers.data import batch_indices, shard
from harness.trainers.policy_gradient import epoch_schedule, trim
from harness.trainers.rollouts import BACKENDS, RolloutSampler


@dataclass
class OnPolicyConfig(TrainConfig):
    rollouts_per_round: int = 256  # prompts sampled per round, all processes together
    ppo_epochs: int = 4  # passes over each round's rollouts
    rollout_batch_size: int = 32  # prompts sampled at once on one process
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    # "torch": the shared sampling loop on the trained models. "vllm": vLLM engines for the policy (weights
    # pushed after every optimizer step that changed them) and, for MiniLLM's mixing, the teacher, in every
    # process on its own GPU. "auto": vllm when it is installed and a GPU is present, else torch.
    rollout_backend: str = "auto"
    rollout_gpu_memory_utilization: float = 0.25  # each engine's share of the GPU's memory (ignored on CPUs)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rollout_backend not in BACKENDS:
            raise HarnessError(f"rollout_backend={self.rollout_backend!r}: choose torch, vllm or auto")


class OnPolicyTrainer(Trainer):
    """Subclasses implement `collect(prompt_indices) -> (buffer, stats)` and `compute_loss` on buffer rows."""

    config_class = OnPolicyConfig
    samples_per_prompt = 1  # buffer rows per sampled prompt
    rollouts: RolloutSampler | None = None

    def setup(self) -> None:
        super().setup()
        self.rollouts = self.start_rollouts()

    def start_rollouts(self, mixer: str | None = None) -> RolloutSampler:
        config = self.config
        settings = SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                    top_p=config.top_p)
        return RolloutSampler(settings, backend=config.rollout_backend, model=config.model, mixer=mixer,
                              vocab_size=self.vocab_size,
                              max_model_len=config.max_prompt_tokens + config.max_new_tokens,
                              seed=config.seed, process_index=self.accelerator.process_index,
                              device=self.accelerator.device, eos_id=self.tokenizer.eos_token_id,
                              pad_id=self.tokenizer.pad_token_id,
                              gpu_memory_utilization=config.rollout_gpu_memory_utilization,
                              autocast=self.accelerator.autocast)

    def run(self) -> list[Path]:
        try:
            return super().run()
        finally:
            if self.rollouts is not None:
                self.rollouts.close()

    def plan_rounds(self, num_prompts: int) -> None:
        """Steps per round and in total, and an empty buffer; called from `prepare_data`."""
        config = self.config
        rows = config.rollouts_per_round * self.samples_per_prompt
        if rows % config.batch_size:
            raise HarnessError("rollouts_per_round (times the samples per prompt) must be a multiple of batch_size "
                               "(the PPO mini-batch)")
        self.steps_per_round = config.ppo_epochs * rows // config.batch_size
        rounds = config.epochs * max(1, num_prompts // config.rollouts_per_round)
        self.total_steps = config.max_steps or rounds * self.steps_per_round
        self.num_prompts = num_prompts
        self.buffer: dict[str, torch.Tensor] = {}
        self.pending: list[list[torch.Tensor]] = []  # per coming step: index tensors of its micro-batches
        self.round_stats: dict[str, float] = {}

    def collect(self, prompt_indices: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Sample and score this process's prompts of a round: the buffer and the round's numbers to log."""
        raise NotImplementedError

    def round_prompts(self, round_index: int) -> list[int]:
        """The training prompts of a round, all processes together: seeded epochs over every prompt (a curriculum,
        such as CROPI's, draws them from its current selection instead)."""
        return batch_indices(self.num_prompts, self.config.rollouts_per_round, round_index, self.config.seed)

    @torch.no_grad()
    def rollout_round(self, round_index: int) -> None:
        """Sample this process's share of the round, score it once, and schedule the PPO epochs over it."""
        config, state = self.config, self.accelerator
        chosen = self.round_prompts(round_index)
        self.student.eval()
        self.buffer, self.round_stats = self.collect(shard(chosen, state.process_index, state.num_processes))
        self.pending = epoch_schedule(len(self.buffer["response_mask"]), config.ppo_epochs,
                                      config.batch_size // state.num_processes, config.micro_batch_size)

    def micro_batches(self, step: int) -> list[dict]:
        if not self.pending:
            self.rollout_round((step - 1) // self.steps_per_round)
        groups = self.pending.pop(0)
        rows = torch.cat(groups)
        minibatch = self.prepare_minibatch({name: tensor[rows] for name, tensor in self.buffer.items()})
        ends = torch.tensor([len(group) for group in groups]).cumsum(0).tolist()
        weights = self.micro_batch_weights(groups)
        return [{**self.to_device(trim(minibatch, torch.arange(end - len(group), end))), "loss_weight": weight}
                for group, end, weight in zip(groups, ends, weights, strict=True)]

    def prepare_minibatch(self, minibatch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The buffer rows of one optimizer step (this process's share) before they are split into micro-batches:
        where a method computes what depends on the whole mini-batch (MiniLLM's whitened advantages)."""
        return minibatch

    def micro_batch_weights(self, groups: list[torch.Tensor]) -> list[float]:
        """Each micro-batch's share of the step's objective: its share of the rows."""
        rows = sum(len(group) for group in groups)
        return [len(group) / rows for group in groups]

    def step_stats(self) -> dict[str, float]:
        return dict(self.round_stats)

    def extra_state(self) -> dict:
        return {"buffer": self.buffer, "pending": self.pending, "round_stats": self.round_stats,
                **self.rollouts.state()}

    def load_extra_state(self, state: dict) -> None:
        self.buffer, self.pending, self.round_stats = state["buffer"], state["pending"], state["round_stats"]
        self.rollouts.load_state(state)
