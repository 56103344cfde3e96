"""CROPI: curriculum RL with off-policy influence guidance; GRPO on a training subset chosen anew at every stage.

1. Offline, once: the initial policy answers every training prompt `train_responses` times (8) and every validation
   prompt `valid_responses` times (32); the verifier scores them (`influence.OfflineRollouts`, reused by every
   stage, and by other runs through `offline_dir`).
2. At the start of each stage of `stage_steps` updates, for each prompt: the gradient of the GRPO surrogate on its
   stored responses at the current policy (ratio current / behaviour, no clipping, KL 0.001 to the initial policy,
   group advantages from the stored rewards; `influence.off_policy_surrogate`), one backward pass per prompt.
3. Sparse random projection: a seeded `keep_ratio` of the coordinates, then a seeded Gaussian map to
   `projection_dim` dimensions (`influence.SparseProjection`).
4. Score = cosine with the mean projected gradient of each validation set (up to 100 prompts each); rank per set,
   sum the reciprocal ranks, keep the top `select_fraction` (10%).
5. GRPO (this file's parent, unchanged) for the stage's updates on the kept prompts; repeat from 2.

Each stage writes `selection_stage<i>.json` (chosen prompt ids, best first, with their merged scores, cosines per
validation set and offline pass rates) beside the checkpoints; a resumed run reads the selection of the stage it was
in rather than rescoring at other weights.
Baseline selectors on the same schedule: `random`, `pass_rate` (hardest first, by offline pass rate),
`learnability` (p (1 - p)) and `influence` (cosines of the unprojected gradients: the reference the projection
approximates, for small models).

Ours, not the paper's: `drop_uniform_groups` (default on) leaves out prompts whose offline responses are all
right or all wrong. Their stored advantages are zero, so their surrogate gradient is the KL term's alone (zero at
the initial policy), and GRPO would learn nothing from them either; skipping them also skips their backward passes.
Every process scores all prompts (the same selection everywhere); under FSDP2 scoring is refused.
"""

from __future__ import annotations

import json
import os
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.trainers import register_trainer
from harness.trainers.data import Problem, batch_indices, chunked
from harness.trainers.grpo import GRPOConfig, GRPOTrainer, group_advantages
from harness.trainers.influence import (
    OfflineRollouts,
    SparseProjection,
    cosine_scores,
    flat_gradient,
    learnability,
    off_policy_surrogate,
    reciprocal_rank_sum,
    top_fraction,
)
from harness.trainers.policy_gradient import trim
from harness.trainers.sampling import Rollout

SELECTORS = ("cropi", "influence", "random", "pass_rate", "learnability")


@dataclass
class CROPIConfig(GRPOConfig):
    """GRPO's settings for the updates; the selection's below (paper defaults unless noted)."""

    selector: str = "cropi"  # cropi, influence (unprojected), random, pass_rate, learnability
    select_fraction: float = 0.1  # share of the training prompts kept per stage
    stage_steps: int = 50  # optimizer steps per stage; a multiple of the steps per rollout round
    train_responses: int = 8  # offline responses per training prompt
    valid_responses: int = 32  # offline responses per validation prompt
    # validation sets in data_dir (or split names of `dataset`), ranked separately
    influence_valid_files: tuple[str, ...] = ("valid.jsonl",)
    max_valid_prompts: int = 100  # per validation set
    influence_kl_coef: float = 0.001  # KL to the initial policy in the scored surrogate
    keep_ratio: float = 0.1  # share of gradient coordinates kept before the projection (paper: 1% to 10%)
    projection_dim: int = 32768
    projection_seed: int = 0
    projection_chunk: int = 1024  # rows of the Gaussian matrix drawn at once
    projection_batch: int = 64  # prompts whose gradients are projected together
    drop_uniform_groups: bool = True  # ours: see the module docstring
    offline_dir: str | None = None  # the offline rollouts store; default <output_dir>/offline_rollouts

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selector not in SELECTORS:
            raise HarnessError(f"selector={self.selector!r}: choose one of {', '.join(SELECTORS)}")
        if not 0 < self.select_fraction <= 1:
            raise HarnessError(f"select_fraction={self.select_fraction}: choose a share in (0, 1]")
        if min(self.train_responses, self.valid_responses) < 2:
            raise HarnessError("train_responses and valid_responses must be at least 2: advantages compare a group")
        if self.stage_steps < 1 or self.max_valid_prompts < 1 or not self.influence_valid_files:
            raise HarnessError("stage_steps and max_valid_prompts must be at least 1, with a validation set named")


@register_trainer("cropi")
class CROPITrainer(GRPOTrainer):
    config_class = CROPIConfig

    def prepare_data(self) -> None:
        super().prepare_data()
        config = self.config
        # with `dataset`, each name is a split of it
        self.valid_sets = {Path(name).stem: self.read_problems(name, name, config.max_valid_prompts)
                           for name in config.influence_valid_files}
        self.select_count = max(1, round(config.select_fraction * len(self.problems)))
        if config.stage_steps % self.steps_per_round:
            raise HarnessError(f"stage_steps={config.stage_steps} is not a whole number of rollout rounds "
                               f"({self.steps_per_round} steps each): change stage_steps")
        if self.select_count < config.rollouts_per_round:
            raise HarnessError(f"select_fraction keeps {self.select_count} of {len(self.problems)} prompts, fewer "
                               f"than rollouts_per_round={config.rollouts_per_round}: raise one or lower the other")
        if self.accelerator.is_fsdp2:
            raise HarnessError("CROPI scores prompts on a whole copy of the policy: use DDP or DeepSpeed, not FSDP2")
        self.offline: dict[str, dict[str, torch.Tensor]] = {}

    def restore(self) -> int:
        """As the base; selections of stages that start at or after the resumed step are made again."""
        step = super().restore()
        if self.accelerator.is_main_process:
            for path in Path(self.config.output_dir).glob("selection_stage*.json"):
                if int(path.stem.removeprefix("selection_stage")) * self.config.stage_steps >= step:
                    path.unlink()
        self.accelerator.wait_for_everyone()
        return step

    # -- the curriculum --
    def round_prompts(self, round_index: int) -> list[int]:
        """Seeded epochs over the current stage's selection."""
        config = self.config
        stage, position = divmod(round_index, config.stage_steps // self.steps_per_round)
        chosen = self.stage_selection(stage)
        return [chosen[i] for i in batch_indices(len(chosen), config.rollouts_per_round, position, config.seed + stage)]

    def stage_selection(self, stage: int) -> list[int]:
        path = Path(self.config.output_dir) / f"selection_stage{stage}.json"
        if path.is_file():
            return json.loads(path.read_text())["prompt_ids"]
        record = self.select(stage)
        if self.accelerator.is_main_process:
            path.with_suffix(".tmp").write_text(json.dumps(record, indent=1))
            os.replace(path.with_suffix(".tmp"), path)
        return record["prompt_ids"]

    def select(self, stage: int) -> dict:
        """Score the candidate prompts at the current policy and keep the best `select_count`."""
        config = self.config
        train = self.offline_rollouts("train", self.problems, config.train_responses)
        pass_rates = train["rewards"].view(-1, config.train_responses).mean(1)
        candidates = self.candidates(pass_rates)
        if len(candidates) < config.rollouts_per_round:
            raise HarnessError(f"only {len(candidates)} training prompts have both right and wrong offline responses, "
                               f"fewer than rollouts_per_round={config.rollouts_per_round}: raise train_responses or "
                               "set drop_uniform_groups=false")
        scores = self.candidate_scores(stage, train, candidates, pass_rates[candidates])
        best = top_fraction(scores["scores"], self.select_count)
        return {"stage": stage, "step": self.completed_steps, "selector": config.selector,
                "candidates": len(candidates), "prompt_ids": [candidates[i] for i in best],
                **{name: [values[i].item() for i in best] for name, values in scores.items()},
                "pass_rates": [pass_rates[candidates[i]].item() for i in best]}

    def candidates(self, pass_rates: torch.Tensor) -> list[int]:
        mixed = (pass_rates > 0) & (pass_rates < 1)
        return (mixed if self.config.drop_uniform_groups else torch.ones_like(mixed)).nonzero().squeeze(1).tolist()

    def candidate_scores(self, stage: int, train: dict, candidates: list[int],
                         pass_rates: torch.Tensor) -> dict[str, torch.Tensor]:
        """`scores` (higher is kept first) and, for the influence selectors, `cosine_<set>` of each validation set;
        each (len(candidates),)."""
        config = self.config
        if config.selector == "random":
            generator = torch.Generator().manual_seed(config.seed * 1000 + stage)
            return {"scores": torch.rand(len(candidates), generator=generator)}
        if config.selector == "pass_rate":
            return {"scores": -pass_rates}
        if config.selector == "learnability":
            return {"scores": learnability(pass_rates)}
        num_params = sum(p.numel() for p in self.student.parameters())
        projection = SparseProjection(num_params, config.projection_dim, config.keep_ratio, config.projection_seed,
                                      config.projection_chunk) if config.selector == "cropi" else None
        targets = []
        for name, problems in self.valid_sets.items():
            valid = self.offline_rollouts(name, problems, config.valid_responses)
            used = self.candidates(valid["rewards"].view(-1, config.valid_responses).mean(1))
            if not used:
                raise HarnessError(f"no prompt of validation set {name!r} has both right and wrong offline responses: "
                                   "raise valid_responses or set drop_uniform_groups=false")
            targets.append(self.influence_features(valid, used, config.valid_responses, projection).mean(0))
        features = self.influence_features(train, candidates, config.train_responses, projection)
        cosines = {f"cosine_{name}": cosine_scores(features, target) for name, target in zip(self.valid_sets, targets)}
        return {"scores": reciprocal_rank_sum(list(cosines.values())).float(), **cosines}

    # -- gradients --
    def influence_features(self, store: dict, prompts: list[int], group_size: int,
                           projection: SparseProjection | None) -> torch.Tensor:
        """(len(prompts), D): each prompt's surrogate gradient, projected (D = projection_dim) or whole."""
        model = self.student
        model.eval()
        parameters = list(model.parameters())
        kept = projection.kept.to(self.accelerator.device) if projection else None
        rows = []
        for batch in chunked(prompts, self.config.projection_batch):
            # each gradient is cut to its kept coordinates as soon as it is made: a batch of whole gradients
            # would hold projection_batch copies of the model
            gradients = torch.stack([gradient if kept is None else gradient[kept] for gradient in
                                     (self.prompt_gradient(model, parameters, store, p, group_size) for p in batch)])
            rows.append(gradients if projection is None else projection.project_kept(gradients))
        return torch.cat(rows)

    def prompt_gradient(self, model, parameters: list[torch.Tensor], store: dict, prompt: int,
                        group_size: int) -> torch.Tensor:
        """The flat gradient of `off_policy_surrogate` on one prompt's stored group, in one backward pass."""
        config = self.config
        rows = torch.arange(prompt * group_size, (prompt + 1) * group_size)
        group = self.to_device(trim(store, rows))
        mask = group["response_mask"].float()
        advantages = group_advantages(store["rewards"][rows], group_size, config.advantage_std)
        rollout = Rollout(group["prompt_ids"], group["prompt_mask"], group["response_ids"], group["response_mask"])
        with torch.enable_grad():
            loss = off_policy_surrogate(self.sequence_logprobs(model, rollout), group["behaviour_logprobs"],
                                        advantages.to(mask.device)[:, None] * mask, mask,
                                        kl_coef=config.influence_kl_coef, aggregation=config.loss_aggregation,
                                        max_length=config.max_new_tokens)
            return flat_gradient(loss, parameters)

    # -- the offline rollouts --
    def offline_settings(self) -> dict:
        """What the stored responses depend on."""
        config = self.config
        names = ("model", "data_dir", "train_file", "dataset", "dataset_config", "train_split", "max_train_samples",
                 "influence_valid_files", "max_valid_prompts", "train_responses", "valid_responses", "prompt_field",
                 "answer_field", "chat_template", "max_prompt_tokens", "max_new_tokens", "temperature", "top_p",
                 "rollout_batch_size", "seed")
        return {name: str(value) if isinstance(value, Path) else value
                for name in names for value in [getattr(config, name)]}

    def offline_rollouts(self, split: str, problems: list[Problem], responses: int) -> dict[str, torch.Tensor]:
        if split in self.offline:
            return self.offline[split]
        config = self.config
        folder = Path(config.offline_dir) if config.offline_dir else Path(config.output_dir) / "offline_rollouts"
        store = OfflineRollouts(folder, {**self.offline_settings(), "influence_valid_files":
                                         list(config.influence_valid_files)}, self.accelerator.is_main_process)
        parts = chunked(problems, config.rollout_batch_size)
        if self.completed_steps and not store.complete(split, len(parts)):
            raise HarnessError(f"{folder} lacks offline rollouts of {split!r}, which come from the initial policy: "
                               "restore them (offline_dir) or start in a new output_dir")

        def sample_part(k: int) -> dict[str, torch.Tensor]:
            prompts = [p.prompt_ids for p in parts[k]]
            with self.seeded(config.seed * 1_000_003 + zlib.crc32(split.encode()) + k):
                rollout = self.rollouts.sample(self.student, self.completed_steps, prompts, n=responses)
            rewards = self.rewards(rollout, [p.answer for p in parts[k] for _ in range(responses)])
            behaviour = self.sequence_logprobs(self.student, rollout)
            return {**vars(rollout), "behaviour_logprobs": behaviour.cpu(), "rewards": rewards.float()}

        self.offline[split] = store.load(split, len(parts), sample_part, self.tokenizer.pad_token_id)
        return self.offline[split]

    @contextmanager
    def seeded(self, seed: int):
        """Sampling from `seed` alone (each offline part is the same however the run was interrupted), leaving the
        training run's random streams as they were."""
        generator = self.rollouts.generator
        saved = generator.get_state()
        on_gpu = self.accelerator.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.accelerator.device] if on_gpu else []):
            torch.manual_seed(seed)
            generator.manual_seed(seed)
            yield
        generator.set_state(saved)
