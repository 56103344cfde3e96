"""MiniLLM's exposure-bias analysis: ExAccErr of a student against its teacher (`exposure_bias`, on Dolly; and
`exposure_bias_synth`, on the built-in synthetic prompts, for the tiny default).

Protocol (MiniLLM, Gu et al. 2024, exposure-bias analysis; the definition is Arora et al. 2022): for every prompt,
sample responses of at most 200 tokens from the student and, separately, from the teacher, by plain ancestral
sampling (temperature 1, no top-p/top-k), 10 samples per prompt. Along each sampled response, the per-step error is
KL(p || q) of the teacher's and the student's full next-token distributions; R(l) accumulates it on
student-sampled prefixes, eps(l) on teacher-sampled ones, and ExAccErr(l) = (R(l) - eps(l)) / eps(l) x 100%
(`harness.metrics.exposure`). Prompts are Dolly's released Alpaca-style prompts, cut to their last 256 tokens.

Options: `--samples N` sets the samples per prompt, `--gen-kwargs max_new_tokens=L` the length, `--seeds S` the
seed, `--batch-size` the rows per forward pass (draws depend on it). Needs the transformers backend (full logits)
and a teacher with the student's tokenizer.
Differences from the reference code: a response that ends (end-of-sequence) before l accumulates no further
error; the reference analysis is not released, so this choice is ours.
"""

from __future__ import annotations

from typing import Any

from harness.backends.base import SamplingSettings
from harness.errors import HarnessError
from harness.metrics.exposure import exacc_err
from harness.registry import register_task
from harness.task import DataSource, Doc, EvalContext, Task, TaskResult
from harness.tasks.instruct import reference_list, released_prompt
from harness.tasks.synth import tiny_data

SAMPLES_PER_PROMPT = 10
MAX_NEW_TOKENS = 200
MAX_PROMPT_TOKENS = 256
REPORTED_LENGTHS = (10, 50, 100, 150, 200)


def _hf_backends(ctx: EvalContext) -> tuple[Any, Any]:
    from harness.backends.hf import HFBackend
    from harness.replicas import loaded

    if ctx.teacher is None:
        raise HarnessError("exposure bias compares the model with a teacher: pass --teacher CKPT")
    model, teacher = loaded(ctx.backend), loaded(ctx.teacher)
    if not isinstance(model, HFBackend) or not isinstance(teacher, HFBackend):
        raise HarnessError("exposure bias needs full next-token distributions: run it with --backend hf")
    if model.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise HarnessError("exposure bias compares next-token distributions token by token: the teacher must use "
                           "the model's tokenizer")
    return model, teacher


def _max_new_tokens(settings: Any) -> int:
    options = dict(settings.gen_kwargs)
    length = options.pop("max_new_tokens", MAX_NEW_TOKENS)
    if options:
        raise HarnessError(f"exposure bias samples from the models' own distributions: drop --gen-kwargs "
                           f"{sorted(options)[0]} (only max_new_tokens applies)")
    if not isinstance(length, int) or length < 1:
        raise HarnessError(f"max_new_tokens must be a positive integer, got {length!r}")
    return length


def _encode_prompts(tokenizer, prompts: list[str], keep: int, device) -> tuple[Any, Any]:
    """Left-padded prompt ids and mask (B, P), each prompt cut to its last `keep` tokens."""
    import torch

    encoded = [tokenizer(prompt)["input_ids"][-keep:] for prompt in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    return ids, mask


def prefix_errors(sampler, teacher, student, prompt_ids, prompt_mask, *, samples: int, max_new_tokens: int,
                  eos_id: int, pad_id: int, vocab_size: int) -> tuple[list[list[float]], Any]:
    """Sample `samples` responses per prompt from `sampler`; return, per response (prompt-major order), the
    per-position KL(teacher || student) up to and including its end, and the rollout itself."""
    import torch
    import torch.nn.functional as F

    from harness.trainers.sampling import response_logits, sample

    ids = prompt_ids.repeat_interleave(samples, dim=0)
    mask = prompt_mask.repeat_interleave(samples, dim=0)
    rollout = sample(sampler, ids, mask, eos_id=eos_id, pad_id=pad_id, vocab_size=vocab_size,
                     max_new_tokens=max_new_tokens).to(ids.device)
    with torch.no_grad():
        log_p = F.log_softmax(response_logits(teacher, rollout, vocab_size), dim=-1)  # (B, T, V)
        log_q = F.log_softmax(response_logits(student, rollout, vocab_size), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T)
    lengths = rollout.response_mask.sum(-1).tolist()
    return [row[:n] for row, n in zip(kl.cpu().tolist(), lengths)], rollout


def _batch_errors(student, teacher, prompts: list[str], samples: int, max_new_tokens: int, seed: int):
    """Per prompt: the student-prefix and teacher-prefix error arrays of its samples, and the student's texts."""
    import torch

    tokenizer, device = student.tokenizer, student.device
    room = min(student.max_length, teacher.max_length) - max_new_tokens
    ids, mask = _encode_prompts(tokenizer, prompts, max(1, min(MAX_PROMPT_TOKENS, room)), device)
    common = dict(samples=samples, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id,
                  pad_id=tokenizer.pad_token_id, vocab_size=len(tokenizer))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        on_student, rollout = prefix_errors(student.model, teacher.model, student.model, ids, mask, **common)
        on_teacher, _ = prefix_errors(teacher.model, teacher.model, student.model, ids, mask, **common)
    texts = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)  # ended rows hold pad after eos
    per_prompt = range(0, len(prompts) * samples, samples)
    return [(on_student[i : i + samples], on_teacher[i : i + samples], texts[i : i + samples]) for i in per_prompt]


def _record(doc_id: int, doc: Doc, on_student, on_teacher, texts: list[str]) -> dict[str, Any]:
    return {
        "doc_id": doc_id,
        "prompt": released_prompt(doc),
        "references": reference_list(doc),
        "predictions": texts,
        "scores": {"student_prefix_error": [sum(e) for e in on_student],
                   "teacher_prefix_error": [sum(e) for e in on_teacher]},
    }


def evaluate_exposure_bias(ctx: EvalContext) -> TaskResult:
    student, teacher = _hf_backends(ctx)
    samples = ctx.settings.samples or SAMPLES_PER_PROMPT
    max_new_tokens = _max_new_tokens(ctx.settings)
    seed = (ctx.settings.seeds or (0,))[0]
    per_batch = max(1, ctx.settings.batch_size // samples)
    records, student_side, teacher_side = [], [], []
    for start in range(0, len(ctx.docs), per_batch):
        docs = ctx.docs[start : start + per_batch]
        prompts = [released_prompt(doc) for doc in docs]
        for offset, (on_s, on_t, texts) in enumerate(_batch_errors(student, teacher, prompts, samples,
                                                                   max_new_tokens, seed + start)):
            records.append(_record(start + offset, docs[offset], on_s, on_t, texts))
            student_side.append(on_s)
            teacher_side.append(on_t)
    curve = exacc_err(student_side, teacher_side, max_new_tokens)
    if not curve.lengths:
        raise HarnessError("the teacher and the model give the same next-token distributions, so ExAccErr is "
                           "undefined: pass a different --teacher")
    metrics = {"exacc_err": curve.value[-1], "exacc_err_length": float(curve.lengths[-1]),
               "accumulated_error_student_prefix": curve.student_prefix[-1],
               "accumulated_error_teacher_prefix": curve.teacher_prefix[-1]}
    metrics.update({f"exacc_err@{n}": curve.at(n) for n in REPORTED_LENGTHS if n in curve.lengths})
    details = {"exacc_err": {"l": curve.lengths, "value": curve.value},
               "accumulated_error": {"student_prefix": curve.student_prefix, "teacher_prefix": curve.teacher_prefix}}
    return TaskResult(samples=records, metrics=metrics, details=details)


def _not_scored(doc: Doc, prediction: Any) -> dict[str, float]:
    raise RuntimeError("exposure-bias tasks are scored by their `evaluate`, never per prediction")


def exposure_bias_task(name: str, data: DataSource, description: str) -> Task:
    return Task(
        name=name,
        description=description,
        data=data,
        prompt=released_prompt,
        references=reference_list,
        scorer=_not_scored,
        metrics=(),
        main_metric="exacc_err",
        higher_is_better=False,
        sampling=SamplingSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, max_prompt_tokens=MAX_PROMPT_TOKENS),
        evaluate=evaluate_exposure_bias,
        needs_teacher=True,
    )


@register_task("exposure_bias")
def exposure_bias() -> Task:
    data = DataSource(local_file="dolly/valid.jsonl", hub_id="MiniLLM/dolly", hub_files="valid.jsonl")
    return exposure_bias_task("exposure_bias", data, "ExAccErr of the model against --teacher on Dolly (MiniLLM)")


@register_task("exposure_bias_synth")
def exposure_bias_synth() -> Task:
    data = DataSource(local_file="synth/test.jsonl", builtin=tiny_data)
    return exposure_bias_task("exposure_bias_synth", data,
                              "ExAccErr of the model against --teacher on the synthetic prompts")
