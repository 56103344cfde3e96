"""MiniLLM's exposure-bias analysis: ExAccErr of a student against its teacher (`exposure_bias`, on Dolly; and
`exposure_bias_synth`, on the built-in synthetic prompts, for the tiny default).

Protocol (MiniLLM, Gu et al. 2024, exposure-bias analysis, as its released minillm/evaluate_exposure_bias.py at
4f2a9de runs it; the definition is Arora et al. 2022): for every prompt, sample responses of at most 256 new tokens
from the student and, separately, from the teacher, at temperature 1 with `no_repeat_ngram_size=6` (the released
evaluation settings), 10 samples per prompt. Along each sampled response, the per-step error is KL(p || q) of the
teacher's and the student's full next-token distributions; R(l) accumulates it on student-sampled prefixes, eps(l)
on teacher-sampled ones, and ExAccErr(l) = (R(l) - eps(l)) / eps(l) x 100% (`harness.metrics.exposure`). Prompts are
Dolly's released Alpaca-style prompts, cut to their last 256 tokens.

As the released script: position l is the distribution after the l-th response token (its logits start at the
first response position, so the first token's own distribution is not counted), a position counts while the
sample is still generating there (the end-of-text token is padding to it, as GPT-2's pad = eos), and each position
is averaged over the samples still generating there.
Options: `--exposure-average all` averages over every sample, ended ones counting 0; `--exposure-first-token`
starts at the first response token's distribution (and ends with the one that predicts end-of-text);
`--samples N` the samples per prompt, `--gen-kwargs max_new_tokens=L,no_repeat_ngram_size=K` the length and ban,
`--seeds S` the seed, `--batch-size` the rows per forward pass (draws depend on it). Needs the transformers backend
(full logits) and a teacher with the student's tokenizer. results.json keeps the settings under details.settings.
Differences from the reference code: its mean adds 1e-3 to the sample count (left out); its `max_new_tokens` is
512 minus the prompt length (256 here for every prompt).
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
MAX_NEW_TOKENS = 256
NO_REPEAT_NGRAM_SIZE = 6
MAX_PROMPT_TOKENS = 256
REPORTED_LENGTHS = (10, 50, 100, 150, 200)


def _hf_backends(ctx: EvalContext) -> tuple[Any, Any]:
    from harness.backends.hf import HFBackend

    if ctx.teacher is None:
        raise HarnessError("exposure bias compares the model with a teacher: pass --teacher CKPT")
    if not isinstance(ctx.backend, HFBackend) or not isinstance(ctx.teacher, HFBackend):
        raise HarnessError("exposure bias needs full next-token distributions: run it with --backend hf")
    if ctx.backend.tokenizer.get_vocab() != ctx.teacher.tokenizer.get_vocab():
        raise HarnessError("exposure bias compares next-token distributions token by token: the teacher must use "
                           "the model's tokenizer")
    return ctx.backend, ctx.teacher


def _sampling_options(settings: Any) -> tuple[int, int]:
    """(max_new_tokens, no_repeat_ngram_size) after --gen-kwargs; the rest of the sampling is fixed."""
    options = dict(settings.gen_kwargs)
    length = options.pop("max_new_tokens", MAX_NEW_TOKENS)
    ban = options.pop("no_repeat_ngram_size", NO_REPEAT_NGRAM_SIZE)
    if options:
        raise HarnessError(f"exposure bias samples from the models' own distributions: drop --gen-kwargs "
                           f"{sorted(options)[0]} (only max_new_tokens and no_repeat_ngram_size apply)")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise HarnessError(f"max_new_tokens must be a positive integer, got {length!r}")
    if not isinstance(ban, int) or isinstance(ban, bool) or ban < 0:
        raise HarnessError(f"no_repeat_ngram_size must be a whole number >= 0, got {ban!r}")
    return length, ban


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
                  eos_id: int, pad_id: int, vocab_size: int, no_repeat_ngram_size: int = 0,
                  from_first_token: bool = False) -> tuple[list[list[float]], Any]:
    """Sample `samples` responses per prompt from `sampler`; return, per response (prompt-major order), the
    per-position KL(teacher || student), and the rollout itself. Positions are the distributions after each
    response token before the end (the released script), or with `from_first_token` the distributions that predict
    each response token, the end-of-text one included."""
    import torch
    import torch.nn.functional as F

    from harness.trainers.sampling import response_logits, sample

    ids = prompt_ids.repeat_interleave(samples, dim=0)
    mask = prompt_mask.repeat_interleave(samples, dim=0)
    rollout = sample(sampler, ids, mask, eos_id=eos_id, pad_id=pad_id, vocab_size=vocab_size,
                     max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size).to(ids.device)
    with torch.no_grad():
        log_p = F.log_softmax(response_logits(teacher, rollout, vocab_size, after_last=True), dim=-1)  # (B, T+1, V)
        log_q = F.log_softmax(response_logits(student, rollout, vocab_size, after_last=True), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).cpu().tolist()  # (B, T+1)
    lengths = rollout.response_mask.sum(-1).tolist()  # up to and including end-of-text
    if from_first_token:
        return [row[:n] for row, n in zip(kl, lengths)], rollout
    ended = [n > 0 and int(rollout.response_ids[i, n - 1]) == eos_id for i, n in enumerate(lengths)]
    return [row[1 : 1 + n - end] for row, n, end in zip(kl, lengths, ended)], rollout


def _batch_errors(student, teacher, prompts: list[str], samples: int, max_new_tokens: int, seed: int, **options):
    """Per prompt: the student-prefix and teacher-prefix error arrays of its samples, and the student's texts;
    `options` go to `prefix_errors`."""
    import torch

    tokenizer, device = student.tokenizer, student.device
    room = min(student.max_length, teacher.max_length) - max_new_tokens
    ids, mask = _encode_prompts(tokenizer, prompts, max(1, min(MAX_PROMPT_TOKENS, room)), device)
    common = dict(samples=samples, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id,
                  pad_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), **options)
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
    max_new_tokens, ban = _sampling_options(ctx.settings)
    first_token, average = ctx.settings.exposure_first_token, ctx.settings.exposure_average
    seed = (ctx.settings.seeds or (0,))[0]
    per_batch = max(1, ctx.settings.batch_size // samples)
    records, student_side, teacher_side = [], [], []
    for start in range(0, len(ctx.docs), per_batch):
        docs = ctx.docs[start : start + per_batch]
        prompts = [released_prompt(doc) for doc in docs]
        found = _batch_errors(student, teacher, prompts, samples, max_new_tokens, seed + start,
                              no_repeat_ngram_size=ban, from_first_token=first_token)
        for offset, (on_s, on_t, texts) in enumerate(found):
            records.append(_record(start + offset, docs[offset], on_s, on_t, texts))
            student_side.append(on_s)
            teacher_side.append(on_t)
    curve = exacc_err(student_side, teacher_side, max_new_tokens, average)
    if not curve.lengths:
        raise HarnessError("the teacher and the model give the same next-token distributions, so ExAccErr is "
                           "undefined: pass a different --teacher")
    metrics = {"exacc_err": curve.value[-1], "exacc_err_length": float(curve.lengths[-1]),
               "accumulated_error_student_prefix": curve.student_prefix[-1],
               "accumulated_error_teacher_prefix": curve.teacher_prefix[-1]}
    metrics.update({f"exacc_err@{n}": curve.at(n) for n in REPORTED_LENGTHS if n in curve.lengths})
    details = {"exacc_err": {"l": curve.lengths, "value": curve.value},
               "accumulated_error": {"student_prefix": curve.student_prefix, "teacher_prefix": curve.teacher_prefix},
               "settings": {"average": average, "from_first_token": first_token, "samples": samples,
                            "max_new_tokens": max_new_tokens, "no_repeat_ngram_size": ban}}
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
        sampling=SamplingSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
                                  no_repeat_ngram_size=NO_REPEAT_NGRAM_SIZE, max_prompt_tokens=MAX_PROMPT_TOKENS),
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
