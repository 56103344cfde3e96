"""PPT: pre-trained prompt tuning (Gu et al. 2022): a frozen model, a trainable soft prompt of 100 virtual tokens.

The method (section 3 of the paper), as one trainer with three uses:
1. Pre-train the prompt on self-supervised rows from an unlabelled corpus, in the format of the downstream task
   family (`corpus=...`, `format=pair|choice|single|unified`; the rows are built by `ppt_data.py`).
2. Tune it on a downstream set, 32 labelled rows and a 32-row dev set, both label-balanced and drawn by
   `split_seed` from the set's pool (`task=ppt_sst2`, ...; the sets are in tasks/ppt.py): PPT starts from the
   pre-trained prompt (`prompt_init=<its checkpoint folder>`), the PT baseline from a random one
   (`prompt_init=random`), the FT baseline trains every weight and has no prompt (`tune=full`).
3. Keep the checkpoint with the best dev accuracy (`selection_metric`), evaluated like any model afterwards:
   `harness eval --model <checkpoint> --tasks ppt_sst2` applies the prompt through the transformers backend.
Loss: the cross-entropy of the gold label word's tokens after the template, over the whole vocabulary (the T5
objective of the paper, for a decoder-only model); scoring compares the summed log-probs of the label words.
The soft prompt is PEFT's prompt tuning (`PromptTuningConfig`); a prompt checkpoint is a PEFT adapter folder naming
its base model, holding only the prompt (the base's `build_model` and frozen-weight hooks).

Settings: paper lr 0.3 with Adafactor on T5-XXL; the spec (and these defaults) 0.05 for PT and PPT, 0.01 for unified
PPT, full fine-tuning 5e-6; batch 8, constant lr, 50 epochs over the 32 rows, dev accuracy every few steps.
Deviation: AdamW instead of Adafactor (the shared optimizer of every trainer here), weight decay 1e-5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.backends.base import split_requests
from harness.backends.soft_prompt import read_prompt
from harness.errors import HarnessError
from harness.models import PROMPT_TENSOR
from harness.trainers import register_trainer
from harness.trainers.base import TrainConfig, Trainer
from harness.trainers.data import Example, chunked, pad_examples
from harness.trainers.loading import load_model
from harness.trainers.ppt_data import pretraining_rows, read_corpus
from harness.trainers.sampling import token_logprobs
from harness.trainers.sft import cross_entropy

_TUNE = ("prompt", "full")


@dataclass
class PPTConfig(TrainConfig):
    """PPT, PT and FT; exactly one of `task` (downstream tuning) and `corpus` (prompt pre-training)."""

    task: str = ""  # downstream: an option-scoring task with a training pool (tasks/ppt.py), e.g. ppt_sst2
    shots: int = 32  # training rows drawn from the pool, label-balanced; as many dev rows, disjoint from them
    split_seed: int = 1  # which few-shot split (the paper averages 5)
    corpus: str = ""  # pre-training: JSONL of documents (a `corpus_field` per line) or a text file (a line each)
    corpus_field: str = "text"
    format: str = "single"  # pre-training format: pair, choice, single or unified (ppt_data.py)
    classifier: str = ""  # 5-label HF sequence classifier for the single format's pseudo-labels
    pretrain_rows: int = 4000  # pre-training rows built from the corpus, and `valid_rows` more for validation
    valid_rows: int = 200
    tune: str = "prompt"  # prompt: only the soft prompt learns (PT, PPT); full: every weight, no prompt (FT)
    prompt_init: str = "random"  # random (PT; N(0, 1)), vocab (embeddings of random tokens) or a prompt folder (PPT)
    num_virtual_tokens: int = 100
    lr: float = 0.05  # unified PPT 0.01; FT 5e-6
    schedule: str = "constant"
    weight_decay: float = 1e-5
    batch_size: int = 8
    micro_batch_size: int = 8
    epochs: int = 50
    max_length: int = 512  # text tokens after the soft prompt

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.task) == bool(self.corpus):
            raise HarnessError("set exactly one of task=<downstream task, e.g. ppt_sst2> and corpus=<documents "
                               "for prompt pre-training>")
        if self.tune not in _TUNE:
            raise HarnessError(f"tune={self.tune!r}: choose prompt (PT, PPT) or full (FT)")
        if self.shots < 1 or self.num_virtual_tokens < 1:
            raise HarnessError("shots and num_virtual_tokens must be at least 1")


@register_trainer("ppt")
class PPTTrainer(Trainer):
    config_class = PPTConfig
    selection_metric = ("valid_acc", False)

    # ---- the model: frozen, with a soft prompt in front --------------------------------------------------------
    def build_model(self):
        config = self.config
        model = load_model(config.model)
        if config.tune == "full":
            return model
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model, set_peft_model_state_dict

        model.requires_grad_(False)
        base = str(Path(config.model).resolve()) if Path(config.model).exists() else config.model
        init = PromptTuningInit.SAMPLE_VOCAB if config.prompt_init == "vocab" else PromptTuningInit.RANDOM
        prompted = get_peft_model(model, PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens, prompt_tuning_init=init))
        if config.prompt_init not in ("random", "vocab"):  # PPT: PEFT loads saved prompts frozen only, so copy it in
            prompt = read_prompt(self.pretrained_prompt(config.prompt_init))
            set_peft_model_state_dict(prompted, {PROMPT_TENSOR: prompt})
        prompted.peft_config["default"].base_model_name_or_path = base  # the folder names the model it runs on
        return prompted

    def pretrained_prompt(self, folder: str) -> Path:
        """A pre-trained prompt folder for this model and length, checked before PEFT loads it."""
        from harness.models import ADAPTER_CONFIG, adapter_base, check_prompt_width

        path = Path(folder)
        if adapter_base(folder) is None:
            raise HarnessError(f"prompt_init={folder} is neither random, vocab nor a soft-prompt folder "
                               f"({ADAPTER_CONFIG}): pass a checkpoint of the prompt pre-training")
        if Path(self.config.model).is_dir():
            check_prompt_width(path, Path(self.config.model))
        length = json.loads((path / ADAPTER_CONFIG).read_text()).get("num_virtual_tokens")
        if length != self.config.num_virtual_tokens:
            raise HarnessError(f"{folder} holds a prompt of {length} virtual tokens: set num_virtual_tokens={length}")
        return path

    @property
    def prompt_length(self) -> int:
        return self.config.num_virtual_tokens if self.config.tune == "prompt" else 0

    # ---- data: rows of (prompt, options, label) ------------------------------------------------------------
    def prepare_data(self) -> None:
        train, valid = self.downstream_rows() if self.config.task else self.pretraining_rows()
        self.train_rows, self.valid_rows = train, valid
        self.train_examples = [self.encode(row["prompt"], row["options"][row["label"]]) for row in train]
        self.total_steps = self.supervised_steps(len(self.train_examples))

    def downstream_rows(self) -> tuple[list[dict], list[dict]]:
        """`shots` balanced training rows of the task's pool and `shots` balanced dev rows of the rest."""
        from harness.data import load_pool
        from harness.registry import get_task
        from harness.task import balanced_sample

        config = self.config
        task = get_task(config.task)
        if task.fewshot is None or task.choices is None:
            raise HarnessError(f"task {config.task} has no options or no training pool: choose an option-scoring "
                               "task with a pool, e.g. ppt_sst2 (see `harness tasks`)")
        pool = load_pool(task, config.data_dir)
        label = task.fewshot.label
        train_ids = set(balanced_sample(pool, config.shots, config.split_seed, label))
        rest = [row for i, row in enumerate(pool) if i not in train_ids]
        dev = [rest[i] for i in balanced_sample(rest, config.shots, config.split_seed, label)]

        def row(doc: dict) -> dict:
            return {"prompt": task.prompt(doc), "options": task.choices(doc), "label": label(doc)}

        return [row(pool[i]) for i in sorted(train_ids)], [row(doc) for doc in dev]

    def pretraining_rows(self) -> tuple[list[dict], list[dict]]:
        config = self.config
        texts = read_corpus(Path(config.corpus), config.corpus_field)
        rows = pretraining_rows(texts, config.format, config.classifier, config.pretrain_rows + config.valid_rows,
                                config.seed)
        if len(rows) <= config.valid_rows:
            raise HarnessError(f"the corpus gives {len(rows)} {config.format} rows, not more than valid_rows="
                               f"{config.valid_rows}: lower valid_rows or give a larger corpus")
        return rows[config.valid_rows :], rows[: config.valid_rows]

    def encode(self, context: str, option: str) -> Example:
        """Token ids split exactly as the evaluation backend splits (context, continuation)."""
        budget = self.config.max_length
        (context_ids, option_ids), = split_requests(self.tokenizer, [(context, option)], max_tokens=budget)
        return Example(context_ids[-(budget - len(option_ids)) :], option_ids)

    # ---- loss and dev accuracy -------------------------------------------------------------------------------
    def text_logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, V) logits at the text's positions (PEFT's output also covers the P virtual tokens before it)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, self.prompt_length :].float()

    def compute_loss(self, batch):
        loss = cross_entropy(self.text_logits(self.model, batch), batch["labels"])
        return loss, {"ce_loss": loss.item()}

    @torch.no_grad()
    def option_logprobs(self, rows: list[dict]) -> list[list[float]]:
        """Per row, the summed log-prob of each option after its prompt, with the current weights."""
        model = self.student
        model.eval()
        pairs = [(row["prompt"], option) for row in rows for option in row["options"]]
        examples = [self.encode(context, option) for context, option in pairs]
        scores = []
        for part in chunked(examples, self.config.eval_batch_size):
            batch = self.to_device(pad_examples(part, self.tokenizer.pad_token_id))
            with self.accelerator.autocast():
                logits = self.text_logits(model, batch)
            targets = batch["labels"][:, 1:]  # position t predicts token t+1
            scores += (token_logprobs(logits[:, :-1], targets) * (targets >= 0)).sum(-1).tolist()
        flat = iter(scores)
        return [[next(flat) for _ in row["options"]] for row in rows]

    def evaluate(self) -> dict[str, float]:
        """Dev accuracy by the likeliest option, and the mean log-prob of the gold option (every process scores
        the whole dev set: it is small)."""
        scores = self.option_logprobs(self.valid_rows)
        hits = [max(range(len(s)), key=s.__getitem__) == row["label"] for s, row in zip(scores, self.valid_rows)]
        gold = [s[row["label"]] for s, row in zip(scores, self.valid_rows)]
        return {"valid_acc": 100.0 * sum(hits) / len(hits), "valid_gold_logprob": sum(gold) / len(gold)}
