"""The shared training base: config, loading, optimisation, evaluation, logging, checkpoints and exact resume.

A method subclasses `Trainer` and overrides only what differs: `prepare_data`, `micro_batches` and `compute_loss`
(and `evaluate` to log more). The loop is written here instead of on `transformers.Trainer`/TRL because MiniLLM
alternates rollout rounds with several PPO epochs over a buffer and adds a second data stream each step, and
SeqKD regenerates its targets; one hand-written loop keeps checkpoint, resume and logging identical for all of
them. It runs through `accelerate`, so the same code runs under `accelerate launch`/`torchrun` with DDP, FSDP2 or
DeepSpeed ZeRO-2 (`configs/accelerate/`). Sampling and evaluation need the whole student on each process without
synchronising processes: under DDP and ZeRO-2 that is the unwrapped model; FSDP2 shards it, so a full copy is
refreshed after each optimizer step. Refused: FSDP1, which FSDP2 supersedes (gathering its full state dict
crashed inside torch with two CPU processes), and ZeRO-3, which would partition the teacher as it loads and
needs every process in every forward pass. DeepSpeed steps its optimizer inside `backward` at the accumulation
boundary, which the loop marks on its last micro-batch; its gradient clipping and micro-batch size are set from
the recipe.

`batch_size` is the number of sequences per optimizer step over all processes (the papers' batch size); each
process runs `batch_size / num_processes` sequences in forward passes of at most `micro_batch_size`.

Safety of a run's folder: before anything is loaded or written, the output folder is checked (not a file, not a
model checkpoint, and when resuming, trained with the same settings except those in `MAY_CHANGE_ON_RESUME`);
resumed state is read with torch's safe unpickler only, so a planted pickle cannot run code; a non-finite loss
or gradient stops the run at that step before the optimizer applies it, and non-finite weights stop it before a
save, so every checkpoint written stays good.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from harness.config import to_dict
from harness.errors import HarnessError
from harness.trainers import checkpoint as ckpt
from harness.trainers.checkpoint import best_checkpoint  # noqa: F401  (re-exported)
from harness.trainers.data import (
    Example,
    batch_indices,
    chunked,
    encode_example,
    encode_prompt,
    field,
    pad_examples,
    read_jsonl,
    shard,
)
from harness.trainers.loading import decay_groups, load_model, load_tokenizer, make_schedule

_PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
_SCHEDULES = ("cosine", "linear", "constant")
# Settings a resumed run may change: they decide how long the run goes, how often it evaluates and saves, and how
# a step is split into forward passes, not what has been trained so far. A longer max_steps/epochs stretches the
# learning-rate schedule from the resumed step on; output_dir changes when a run's folder is moved. Any other
# difference is an error.
MAY_CHANGE_ON_RESUME = ("max_steps", "epochs", "eval_every", "save_every", "eval_batch_size", "max_eval_samples",
                        "micro_batch_size", "progress", "resume", "output_dir")


@dataclass
class TrainConfig:
    """Settings every method shares. Paths may be relative to the working directory."""

    model: str = ""  # the student (trained): an HF-format folder or hub id
    teacher: str | None = None  # the frozen teacher, for the distillation methods
    data_dir: Path = Path("data/synth")
    train_file: str = "train.jsonl"
    valid_file: str = "valid.jsonl"
    max_train_samples: int | None = None  # use only the first N training rows
    prompt_field: str = "prompt"
    response_field: str = "output"
    output_dir: Path = Path("runs/train")
    max_prompt_tokens: int = 256  # prompts keep their last tokens
    max_length: int = 512  # prompt + response tokens
    lr: float = 5e-4
    schedule: str = "cosine"  # cosine (to min_lr), linear (to 0) or constant, each after warm-up
    min_lr: float = 1e-7
    warmup_steps: int = 0
    weight_decay: float = 0.01  # not applied to biases and norm weights
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    batch_size: int = 32  # sequences per optimizer step, all processes together
    micro_batch_size: int = 8  # sequences per forward pass on one process
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    eval_every: int = 0  # optimizer steps; 0: only after the last step
    save_every: int = 0  # optimizer steps; 0: only after the last step
    eval_batch_size: int = 16
    max_eval_samples: int | None = None
    precision: str = "fp32"  # fp32, bf16 or fp16 (mixed precision; master weights stay fp32)
    seed: int = 1
    resume: bool = True  # continue from the last complete checkpoint in output_dir
    progress: bool = True  # tqdm bar on the main process

    def __post_init__(self) -> None:
        if self.precision not in _PRECISIONS:
            raise HarnessError(f"precision={self.precision!r}: choose one of {', '.join(_PRECISIONS)}")
        if self.schedule not in _SCHEDULES:
            raise HarnessError(f"schedule={self.schedule!r}: choose one of {', '.join(_SCHEDULES)}")
        if min(self.batch_size, self.micro_batch_size, self.epochs, self.eval_batch_size) < 1:
            raise HarnessError("batch_size, micro_batch_size, epochs and eval_batch_size must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise HarnessError("max_steps must be at least 1 (or null to train for `epochs`)")


class Trainer:
    """Shared loop; subclasses define the data (`prepare_data`, `micro_batches`) and the loss (`compute_loss`)."""

    config_class: type = TrainConfig
    method: str = "base"
    needs_teacher: bool = False
    dropout: bool = True  # False: the student stays in eval mode during its updates too
    selection_metric: tuple[str, bool] = ("valid_loss", True)  # (logged metric, lower is better): the chosen checkpoint

    def __init__(self, config: TrainConfig, on_checkpoint: Callable[[Path, int], None] | None = None):
        self.config = config
        self.on_checkpoint = on_checkpoint
        self.checkpoints: list[Path] = []
        self.teacher = None
        self.reference = None  # a frozen reference policy, for methods with a KL term to it
        self.completed_steps = 0  # optimizer steps behind the current weights

    # ---- the pipeline -------------------------------------------------------------------------------------
    def run(self) -> list[Path]:
        self.check_output_dir()
        self.setup()
        start = self.restore()
        self.loop(start)
        self.accelerator.wait_for_everyone()
        return list(self.checkpoints)

    def settings(self) -> dict:
        return {"method": self.method, **to_dict(self.config)}

    def check_output_dir(self) -> None:
        """Refuse an output folder this run must not write into, before any model loads and any file is written."""
        output = Path(self.config.output_dir)
        if output.exists() and not output.is_dir():
            raise HarnessError(f"output_dir={output} is a file: set output_dir to a folder")
        if (output / "config.json").is_file():
            raise HarnessError(f"output_dir={output} holds a model checkpoint (config.json): choose another folder")
        found = ckpt.complete_checkpoints(output)
        if not found:
            return
        if not self.config.resume:
            raise HarnessError(f"{output} already holds checkpoints: set resume=true or choose another output_dir")
        saved_file = found[-1] / "config.yaml"
        saved = yaml.safe_load(saved_file.read_text()) if saved_file.is_file() else {}
        current = self.settings()
        for key, value in current.items():
            if key in saved and saved[key] != value and key not in MAY_CHANGE_ON_RESUME:
                raise HarnessError(
                    f"{output} holds a run with {key}={saved[key]!r}, not {value!r}: resuming would mix the two; "
                    f"set {key} back or choose another output_dir (settings that may change on resume: "
                    f"{', '.join(MAY_CHANGE_ON_RESUME)})"
                )

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs, set_seed

        config = self.config
        processes, on_cpu = int(os.environ.get("WORLD_SIZE", "1")), not torch.cuda.is_available()
        # DeepSpeed on CPUs needs gloo named explicitly (accelerate's CPU mode would replace DeepSpeed by DDP).
        cpu_group = [InitProcessGroupKwargs(backend="gloo")] if processes > 1 and on_cpu else []
        if on_cpu:  # accelerate imports DeepSpeed when installed; naming its device keeps it from printing a guess
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.accelerator = Accelerator(
            mixed_precision=_PRECISIONS[config.precision], step_scheduler_with_optimizer=False,
            kwargs_handlers=cpu_group,
        )
        self.configure_strategy()
        if processes != self.accelerator.num_processes:
            raise HarnessError("launched as several processes but accelerate saw one: on CPUs set "
                               "ACCELERATE_USE_CPU=1 (or use `accelerate launch --cpu`)")
        if config.batch_size % self.accelerator.num_processes:
            raise HarnessError(
                f"batch_size={config.batch_size} does not split over {self.accelerator.num_processes} processes"
            )
        set_seed(config.seed)
        self.tokenizer = load_tokenizer(config.model)
        self.vocab_size = len(self.tokenizer)
        if self.needs_teacher:
            self.teacher = self.load_teacher()
        self.reference = self.load_reference()
        model = self.build_model()
        self.prepare_data()
        optimizer = torch.optim.AdamW(
            decay_groups(model, config.weight_decay), lr=config.lr, betas=tuple(config.betas)
        )
        scheduler = make_schedule(config, optimizer, self.total_steps)
        sharded = self.accelerator.is_fsdp2  # sampling then needs a full copy: see `student`
        self.replica = copy.deepcopy(model).to(self.accelerator.device).requires_grad_(False) if sharded else None
        self.replica_version: int | None = None
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        # Only the trained weights go into a checkpoint's resume state (and, through `save_pretrained`, a PEFT
        # model's folder); frozen ones are rebuilt from `config.model` by `build_model` when a run resumes.
        self.trained = {name for name, p in self.model.named_parameters() if p.requires_grad}
        self.partly_frozen = len(self.trained) < len(list(self.model.parameters()))
        if self.partly_frozen:
            self.accelerator.register_save_state_pre_hook(self.drop_frozen)

    def build_model(self):
        """The model the optimizer trains, from `config.model`. Methods that train part of a model (PPT's soft
        prompt) wrap and freeze it here; parameters left with `requires_grad=False` are neither optimised nor
        saved."""
        return load_model(self.config.model)

    def drop_frozen(self, models, weights: list[dict], output_dir: str) -> None:
        """accelerate's save-state hook: keep only the trained tensors of each state dict."""
        for state in weights:
            for name in [name for name in state if name not in self.trained]:
                del state[name]

    def configure_strategy(self) -> None:
        """Refuse the strategies the loop cannot run; give DeepSpeed the recipe's clipping and micro-batch."""
        from accelerate.utils import DistributedType

        state = self.accelerator.state
        kind = self.accelerator.distributed_type
        if kind == DistributedType.FSDP and not self.accelerator.is_fsdp2:
            raise HarnessError("FSDP1 is not supported: set fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
        if kind == DistributedType.DEEPSPEED:
            plugin = state.deepspeed_plugin
            if plugin.zero_stage == 3:
                raise HarnessError("DeepSpeed ZeRO-3 is not supported: use ZeRO-2 (configs/accelerate/deepspeed"
                                   ".yaml) or FSDP2 (configs/accelerate/fsdp.yaml)")
            plugin.deepspeed_config.update(gradient_clipping=self.config.max_grad_norm,
                                           train_micro_batch_size_per_gpu=self.config.micro_batch_size)

    def load_teacher(self):
        if not self.config.teacher:
            raise HarnessError(f"{self.method} needs a teacher: set teacher=<checkpoint folder or hub id>")
        if load_tokenizer(self.config.teacher).get_vocab() != self.tokenizer.get_vocab():
            raise HarnessError("teacher and student tokenizers differ: distil between models of one tokenizer")
        return self.load_frozen(self.config.teacher)

    def load_reference(self):
        """The frozen reference policy next to the trained one (GRPO's KL term), or None: methods that keep one
        override this."""
        return None

    def load_frozen(self, path: str):
        """A model that is only ever evaluated (teacher, reference policy), in the recipe's precision."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision, torch.float32)
        model = load_model(path, dtype).to(self.accelerator.device).eval()
        model.requires_grad_(False)
        return model

    @property
    def student(self):
        """The whole student on this process, for sampling and evaluation, which must not synchronise processes.

        Under FSDP it is a full copy, gathered from the shards when an optimizer step has changed them: a
        collective, so every process reads `student` at the same points of the loop.
        """
        if self.replica is None:
            return self.accelerator.unwrap_model(self.model)
        if self.replica_version != self.completed_steps:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
            self.replica.load_state_dict(weights)
            self.replica_version = self.completed_steps
        return self.replica

    def loop(self, start: int) -> None:
        from tqdm.auto import tqdm

        config = self.config
        self.completed_steps = start
        bar = tqdm(
            total=self.total_steps,
            initial=start,
            desc=self.method,
            disable=not (config.progress and self.accelerator.is_main_process),
        )
        for step in range(start + 1, self.total_steps + 1):
            began = time.perf_counter()
            record = {"step": step, "lr": self.scheduler.get_last_lr()[0], **self.optimizer_step(step)}
            self.completed_steps = step
            seconds = time.perf_counter() - began
            record.update(seconds=seconds, tokens_per_s=record.pop("tokens") / max(seconds, 1e-9))
            last = step == self.total_steps
            saving = (config.save_every and step % config.save_every == 0) or last
            if saving:
                self.stop_if_not_finite(step, weights=self.weights_bad())
            if (config.eval_every and step % config.eval_every == 0) or last:
                record.update(self.evaluate())
            self.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if saving:
                self.save(step)
        bar.close()

    # ---- one optimizer step -------------------------------------------------------------------------------
    def optimizer_step(self, step: int) -> dict[str, float]:
        """Accumulate gradients over this process's micro-batches, then clip and step; return mean loss terms.

        A micro-batch counts `loss_weight` towards the step's objective when it carries one (MiniLLM mixes
        rollout and pre-training micro-batches); otherwise its share of the rows.
        """
        self.model.train(self.dropout)
        batches = self.micro_batches(step)
        rows = sum(self.batch_rows(batch) for batch in batches)
        sums: dict[str, float] = defaultdict(float)
        weights: dict[str, float] = defaultdict(float)
        objective, tokens = 0.0, 0
        for index, batch in enumerate(batches):
            share = float(batch.pop("loss_weight", self.batch_rows(batch) / rows))
            sync = index == len(batches) - 1
            self.accelerator.sync_gradients = sync  # DeepSpeed's accumulation boundary
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                loss, terms = self.compute_loss(batch)
                self.accelerator.backward(loss * share)
            objective += loss.item() * share
            for name, value in terms.items():
                sums[name] += value * share
                weights[name] += share
            tokens += int(batch["attention_mask"].sum())
        norm = None
        if self.config.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.stop_if_not_finite(step, loss=objective, gradient_norm=norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        means = {name: sums[name] / max(weights[name], 1e-12) for name in sums}
        means = self.mean_over_processes({"loss": objective, **means, **self.step_stats()})
        tokens_all = self.accelerator.reduce(torch.tensor(tokens, device=self.accelerator.device), "sum")
        return {**means, "tokens": float(tokens_all)}

    def stop_if_not_finite(self, step: int, **values: float | None) -> None:
        """Stop when any named value (loss, gradient norm, count of bad weight tensors) is NaN or inf, on every
        process at once (the values are all-reduced): before the optimizer applies it, before a save keeps it."""
        names = [name for name, value in values.items() if value is not None]
        summed = self.accelerator.reduce(torch.tensor([float(values[name]) for name in names],
                                                      device=self.accelerator.device), "sum").tolist()
        bad = [f"{name.replace('_', ' ')} {value:g}" for name, value in zip(names, summed) if not math.isfinite(value)]
        if bad:
            kept = self.checkpoints[-1] if self.checkpoints else "none yet"
            raise HarnessError(f"training stopped at step {step}: {', '.join(bad)}; the last good checkpoint ({kept}) "
                               "is kept: lower lr, use fp32 or check the data")

    def weights_bad(self) -> float:
        """inf when a parameter tensor of this process holds a NaN or inf (its local shard under FSDP2), else 0."""
        bad = any(not torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()
                  for p in self.model.parameters())
        return math.inf if bad else 0.0

    def step_stats(self) -> dict[str, float]:
        """Extra numbers to log with every step (e.g. the current rollout round's mean response length)."""
        return {}

    @staticmethod
    def batch_rows(batch: dict) -> int:
        return len(batch["attention_mask"])

    def mean_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        names = sorted(values)
        stacked = torch.tensor([values[name] for name in names], device=self.accelerator.device)
        reduced = self.accelerator.reduce(stacked, "mean")
        return dict(zip(names, reduced.tolist(), strict=True))

    # ---- data and loss: what methods override ------------------------------------------------------------
    def read_prompts(self, drop_long: bool = False) -> list[list[int]]:
        """Encoded training prompts alone, for methods whose targets are sampled (SeqKD, MiniLLM): the response
        field is never read. Prompts over `max_prompt_tokens` keep their last tokens, or with `drop_long` are left
        out."""
        config = self.config
        path = Path(config.data_dir) / config.train_file
        rows = read_jsonl(path)[: config.max_train_samples]
        limit = config.max_prompt_tokens
        # one token over the limit is enough to tell a long prompt
        prompts = [encode_prompt(self.tokenizer, field(row, config.prompt_field, path), limit + 1) for row in rows]
        return [ids[-limit:] for ids in prompts if not (drop_long and len(ids) > limit)]

    def read_examples(self, file_name: str, limit: int | None = None) -> list[Example]:
        config = self.config
        path = Path(config.data_dir) / file_name
        rows = read_jsonl(path)[:limit]
        return [
            encode_example(
                self.tokenizer,
                field(row, config.prompt_field, path),
                field(row, config.response_field, path),
                config.max_prompt_tokens,
                config.max_length,
            )
            for row in rows
        ]

    def prepare_data(self) -> None:
        """Supervised data: gold responses for training and validation."""
        self.train_examples = self.read_examples(self.config.train_file, self.config.max_train_samples)
        self.valid_examples = self.read_examples(self.config.valid_file, self.config.max_eval_samples)
        self.total_steps = self.supervised_steps(len(self.train_examples))

    def supervised_steps(self, num_rows: int) -> int:
        config = self.config
        if config.max_steps is not None:
            return config.max_steps
        per_epoch = num_rows // config.batch_size
        if per_epoch == 0:
            raise HarnessError(f"{num_rows} training rows for batch_size={config.batch_size}: lower batch_size")
        return config.epochs * per_epoch

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This process's share of global batch `step`, as padded micro-batches on the device."""
        state = self.accelerator
        rows = batch_indices(len(self.train_examples), self.config.batch_size, step - 1, self.config.seed)
        mine = [self.train_examples[i] for i in shard(rows, state.process_index, state.num_processes)]
        return [self.to_device(pad_examples(part, self.tokenizer.pad_token_id)) for part in
                chunked(mine, self.config.micro_batch_size)]

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: tensor.to(self.accelerator.device) for name, tensor in batch.items()}

    def student_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, V) next-token logits of the trained model, cut to the tokenizer's vocabulary."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits[..., : self.vocab_size].float()

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.accelerator.autocast():
            out = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits[..., : self.vocab_size].float()

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on one micro-batch, and the terms to log (floats)."""
        raise NotImplementedError

    # ---- evaluation, logging, checkpoints ----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-level cross-entropy of the student on the gold validation responses (checkpoint selection)."""
        from harness.trainers.sft import cross_entropy

        state, model = self.accelerator, self.student
        model.eval()
        total = torch.zeros(2, device=state.device)
        for part in chunked(shard(self.valid_examples, state.process_index, state.num_processes),
                            self.config.eval_batch_size):
            batch = self.to_device(pad_examples(part, self.tokenizer.pad_token_id))
            with state.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            count = (batch["labels"][:, 1:] != -100).sum()
            total += torch.stack([cross_entropy(logits[..., : self.vocab_size].float(), batch["labels"]) * count,
                                  count.float()])
        total = state.reduce(total, "sum")
        return {"valid_loss": (total[0] / total[1].clamp(min=1)).item()}

    def log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with (Path(self.config.output_dir) / "log.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def extra_state(self) -> dict:
        """Method state beyond model/optimizer/RNG that a resumed run needs (e.g. MiniLLM's rollout buffer)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def write_config(self, folder: Path) -> None:
        text = yaml.safe_dump(self.settings(), sort_keys=False)
        (folder / "config.yaml").write_text(text)

    def save(self, step: int) -> None:
        state, output = self.accelerator, Path(self.config.output_dir)
        temporary = ckpt.temporary_folder(output, step)
        state.save_state(str(temporary / ckpt.TRAINING_STATE))
        weights = state.get_state_dict(self.model)
        torch.save(self.extra_state(), temporary / ckpt.TRAINING_STATE / f"method_{state.process_index}.pt")
        if state.is_main_process:
            state.unwrap_model(self.model).save_pretrained(temporary, state_dict=weights, safe_serialization=True)
            self.tokenizer.save_pretrained(temporary)
            self.write_config(temporary)
        state.wait_for_everyone()
        if state.is_main_process:
            self.checkpoints.append(ckpt.finish(temporary, step, {"method": self.method}))
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.checkpoints[-1], step)
        state.wait_for_everyone()

    def load_training_state(self, folder: Path) -> None:
        """Optimizer, scheduler, RNG and method state, read with torch's safe unpickler only (accelerate loads with
        `weights_only=True`; it skips an unreadable RNG file silently, so that one is checked here first)."""
        from accelerate.utils.other import load as safe_load

        index = self.accelerator.process_index
        try:
            safe_load(folder / f"random_states_{index}.pkl")
            # frozen weights are left out of the saved state (see setup); DeepSpeed's loader takes no `strict`
            self.accelerator.load_state(str(folder), **({"strict": False} if self.partly_frozen else {}))
            self.load_extra_state(torch.load(folder / f"method_{index}.pt", weights_only=True))
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise HarnessError(f"{folder} holds training state that safe loading refuses ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200]}): delete that checkpoint folder to resume from "
                               "an earlier one, or choose another output_dir") from None

    def restore(self) -> int:
        """Start fresh, or load the last complete checkpoint; return the step it ended."""
        state, output = self.accelerator, Path(self.config.output_dir)
        found = ckpt.complete_checkpoints(output)  # `check_output_dir` has compared their settings with ours
        step = ckpt.checkpoint_step(found[-1]) if found else 0
        if step > self.total_steps:
            raise HarnessError(f"{found[-1]} is past the {self.total_steps} steps configured: raise max_steps")
        if state.is_main_process:
            output.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(output)
            self.write_config(output)
        state.wait_for_everyone()
        self.checkpoints = found
        if not found:
            if state.is_main_process:
                (output / "log.jsonl").unlink(missing_ok=True)
            return 0
        last = found[-1]
        self.load_training_state(last / ckpt.TRAINING_STATE)
        if state.is_main_process:
            ckpt.truncate_log(output / "log.jsonl", step)
        return step
