"""Sequence-level KD: the teacher answers every training prompt once; the student trains on those answers.

One sample per prompt, temperature 1, top-p 1, up to 256 new tokens. Loss: CE on the teacher's tokens, or with
`kd_ratio` > 0 the word-level mix (1 - r) CE + r soft-CE against the teacher on the same sequences (the released
code trains with r = 0.5). The gold response field of the training file is never read: the released code reads
it by mistake in one path, which would make this plain SFT. The samples are written to `<output>/teacher_samples
.jsonl` before training and reused on resume, so a resumed run trains on the same targets. With
`sample_backend=vllm` the teacher answers through the harness's vLLM backend (one engine, per-request seeds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.trainers import register_trainer
from harness.trainers.base import TrainConfig, Trainer
from harness.trainers.data import Example, chunked, left_pad, shard
from harness.trainers.kd import kd_loss
from harness.trainers.sampling import sample
from harness.trainers.sft import cross_entropy


@dataclass
class SeqKDConfig(TrainConfig):
    kd_ratio: float = 0.0  # released code: 0.5 (CE + word-level KD on the teacher's samples)
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    sample_batch_size: int = 32  # prompts the teacher answers at once on one process
    samples_file: str = "teacher_samples.jsonl"  # written in output_dir
    # "torch": the trainers' own sampling loop, sharded over processes. "hf", "vllm" or "auto": a harness
    # backend on the main process (vLLM's engine samples far faster on GPUs), request i seeded with seed + i.
    sample_backend: str = "torch"


@register_trainer("seqkd")
class SeqKDTrainer(Trainer):
    config_class = SeqKDConfig
    needs_teacher = True

    def prepare_data(self) -> None:
        config = self.config
        prompts = self.read_prompts()  # the targets are the teacher's samples, never the gold field
        samples = Path(config.output_dir) / config.samples_file
        if not samples.is_file():
            self.write_teacher_samples(prompts, samples)
        responses = [json.loads(line)["response_ids"] for line in samples.read_text().splitlines()]
        self.train_examples = [Example(p, r[: max(1, config.max_length - len(p))])
                               for p, r in zip(prompts, responses, strict=True)]
        self.valid_examples = self.read_examples(config.valid_file, config.max_eval_samples)
        self.total_steps = self.supervised_steps(len(self.train_examples))

    @torch.no_grad()
    def write_teacher_samples(self, prompts: list[list[int]], samples: Path) -> None:
        from accelerate.utils import gather_object

        config, state = self.config, self.accelerator
        if config.sample_backend != "torch":
            answered = self.backend_samples(prompts) if state.is_main_process else []
        else:
            answered = sorted(gather_object(self.loop_samples(prompts)))
        if state.is_main_process:
            samples.parent.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"index": i, "response": self.tokenizer.decode(ids, skip_special_tokens=True),
                                 "response_ids": ids}) for i, ids in answered]
            temporary = samples.with_suffix(".tmp")
            temporary.write_text("".join(line + "\n" for line in lines))
            temporary.replace(samples)
        state.wait_for_everyone()

    def backend_samples(self, prompts: list[list[int]]) -> list[tuple[int, list[int]]]:
        """The teacher's answers through a harness backend; response ids end with eos when the answer ended."""
        from harness.backends import GenerationRequest, SamplingSettings, load

        config, eos = self.config, self.tokenizer.eos_token_id
        settings = SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                    top_p=config.top_p, max_prompt_tokens=config.max_prompt_tokens)
        texts = self.tokenizer.batch_decode(prompts, skip_special_tokens=True)
        requests = [GenerationRequest(text, settings, seed=config.seed + i) for i, text in enumerate(texts)]
        with load(str(config.teacher), backend=config.sample_backend) as teacher:
            completions = teacher.generate(requests, progress=config.progress)
        encoded = self.tokenizer([c.text for c in completions], add_special_tokens=False)["input_ids"]
        return [(i, ids + [eos] * (c.finish_reason == "stop"))
                for i, (ids, c) in enumerate(zip(encoded, completions, strict=True))]

    def loop_samples(self, prompts: list[list[int]]) -> list[tuple[int, list[int]]]:
        """The teacher's answers from the trainers' own sampling loop, this process's share of the prompts."""
        config, state = self.config, self.accelerator
        rows = shard(range(len(prompts)), state.process_index, state.num_processes)
        answered = []
        for part in chunked(rows, config.sample_batch_size):
            ids, mask = left_pad([prompts[i] for i in part], self.tokenizer.pad_token_id)
            with state.autocast():
                rollout = sample(self.teacher, ids.to(state.device), mask.to(state.device),
                                 eos_id=self.tokenizer.eos_token_id, pad_id=self.tokenizer.pad_token_id,
                                 vocab_size=self.vocab_size, max_new_tokens=config.max_new_tokens,
                                 temperature=config.temperature, top_p=config.top_p)
            for index, tokens, alive in zip(part, rollout.response_ids, rollout.response_mask, strict=True):
                answered.append((index, tokens[alive.bool()].tolist()))
        return answered

    def compute_loss(self, batch):
        logits = self.student_logits(batch)
        if self.config.kd_ratio == 0:
            loss = cross_entropy(logits, batch["labels"])
            return loss, {"ce_loss": loss.item()}
        loss, ce, soft = kd_loss(logits, self.teacher_logits(batch), batch["labels"], self.config.kd_ratio)
        return loss, {"ce_loss": ce.item(), "kd_loss": soft.item()}
