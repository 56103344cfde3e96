"""Run lm-evaluation-harness tasks on our backends and keep their results in our store and leaderboard.

`harness eval --tasks lm_eval:<task>[,...]` names a task of lm-eval's registry (`lm_eval:arc_easy`) or one defined
by a YAML file in the include folder. The include folder is the run's data folder (`--data-dir`, else
`HARNESS_DATA_DIR`): its YAML files are indexed first, and lm-eval's own registry (about 40 s to index on two CPU
cores) is only read when the name is not found there. Such tasks load their own data, so the runner reads no rows
for them. Two rules keep a data folder from acting behind the user's back: a folder task whose YAML (or a YAML it
includes) calls Python through `!function` runs only with `--trust-remote-code`, and a folder task named like a
task of lm-eval's registry is refused (rename it), so a result labelled `lm_eval:arc_easy` is always lm-eval's.

Two pieces: `HarnessLM`, an `lm_eval.api.model.LM` that answers lm-eval's three request types with one of our
backends, and `lm_eval_task`, a `Task` whose `evaluate` hook runs `simple_evaluate` for that one task and turns
lm-eval's output into our records: metrics as plain keys (`acc`, `acc_stderr`; a filter other than lm-eval's
default "none" is kept as a suffix, `exact_match_strict-match`) and one samples.jsonl record per document.
Units and uncertainty as for our own tasks: a metric that is the mean of per-document scores in [0, 1] (accuracy,
exact match) is reported in percent, with its standard error over documents (lm-eval's `mean_stderr`, times 100)
and 95% interval (`acc_ci95`); other metrics (perplexities, corpus BLEU) keep lm-eval's value and unit, without
lm-eval's 100,000-iteration bootstrap (`bootstrap_iters=0`). Per-document scores in samples.jsonl stay as lm-eval
logs them.

Every request goes through the run's cache, keyed by the model's weights and the full request as the native
tasks' generations are, and committed chunk by chunk: after `kill -9` the same command finishes without
recomputing what was answered. The run's settings reach lm-eval's requests where its task allows: `--gen-kwargs`
overrides the task's generation kwargs, `--samples k` sets the task's `repeats` (lm-eval scores the first of them
unless the task's filters use all, e.g. majority voting), and `--seeds` gives the seed of each repeat (default:
the repeat index).

Differences from lm-eval's own HFLM: `loglikelihood_rolling` scores the whole text as one window after the
end-of-text token. lm-eval splits texts longer than the model's context into rolling windows; here the backend
keeps the last `max_length` tokens, so for such texts the leading tokens go unscored (a warning says how many texts).
Sampled generations use the request's repeat number as seed (lm-eval sends the k repeats of a request as k
identical requests; each gets its own seed), so a sample never depends on its batch neighbours.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM

from harness import store
from harness.backends.base import Backend, GenerationRequest, SamplingSettings
from harness.errors import HarnessError
from harness.metrics.stats import with_uncertainty
from harness.task import DataSource, EvalContext, Task, TaskResult

LOGGER = logging.getLogger(__name__)
# lm-eval generation kwargs we understand; anything else would be silently ignored, so it is refused instead.
_GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k"}
_DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM default


def sampling_from_lm_eval(gen_kwargs: dict[str, Any]) -> SamplingSettings:
    """lm-eval's generation kwargs as our settings. As in HFLM, sampling needs an explicit `do_sample: true`."""
    unknown = sorted(set(gen_kwargs) - _GEN_KEYS)
    if unknown:
        raise HarnessError(f"lm-eval generation kwarg {unknown[0]!r} is not supported by the harness backends: "
                           f"remove it from the task's generation_kwargs (supported: {', '.join(sorted(_GEN_KEYS))})")
    until = gen_kwargs.get("until") or ()
    temperature = float(gen_kwargs.get("temperature", 1.0 if gen_kwargs.get("do_sample") else 0.0))
    return SamplingSettings(
        max_new_tokens=int(gen_kwargs.get("max_gen_toks", _DEFAULT_MAX_GEN_TOKS)),
        temperature=temperature if gen_kwargs.get("do_sample") else 0.0,
        top_p=float(gen_kwargs.get("top_p", 1.0)),
        top_k=int(gen_kwargs.get("top_k", 0)),
        stop=(until,) if isinstance(until, str) else tuple(until),
    )


def repeat_numbers(requests) -> list[int]:
    """0, 1, ... for the copies of one request: lm-eval sends a task's `repeats` as the same request k times."""
    seen: Counter = Counter()
    numbers = []
    for request in requests:
        key = (request.task_name, request.doc_id, request.idx)
        numbers.append(seen[key])
        seen[key] += 1
    return numbers


class HarnessLM(LM):
    """lm-eval's model interface over any of our backends, through the run's cache when one is given."""

    def __init__(self, backend: Backend, progress: bool = False, cache: store.GenerationCache | None = None,
                 gen_kwargs: dict[str, Any] | None = None, seeds: tuple[int, ...] | None = None):
        super().__init__()
        self.backend = backend
        self.progress = progress
        self.cache = cache
        self.gen_kwargs = gen_kwargs or {}
        self.seeds = seeds

    def _cached(self, kind: str, pairs: list[tuple[str, str]]) -> list[Any]:
        """`backend.<kind>(pairs)` served from the cache where it holds the answer; new answers committed per
        chunk."""
        from harness.replicas import answer
        from harness.runner import scores_cached

        if self.cache is None:
            return answer(self.backend, kind, pairs, {})
        return scores_cached(self.backend, kind, pairs, self.cache, self.progress, desc=kind)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = self._cached("loglikelihood", [tuple(request.args) for request in requests])
        return [(result["logprob"], result["is_greedy"]) for result in results]

    def loglikelihood_rolling(self, requests) -> list[float]:
        texts = [request.args[0] for request in requests]
        token_logprobs = self._cached("token_logprobs", [("", text) for text in texts])
        self._warn_if_cut(texts, token_logprobs)
        return [sum(logprobs) for logprobs in token_logprobs]

    def _warn_if_cut(self, texts: list[str], token_logprobs: list[list[float]]) -> None:
        tokenizer = getattr(self.backend, "tokenizer", None)
        if tokenizer is None:
            return
        cut = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) > len(lps)
                  for text, lps in zip(texts, token_logprobs))
        if cut:
            LOGGER.warning("%d of %d texts are longer than the model's context; their first tokens are not "
                           "scored (lm-eval would use rolling windows)", cut, len(texts))

    def generate_until(self, requests) -> list[str]:
        from harness.runner import apply_gen_kwargs, generate_cached

        ours = [GenerationRequest(context, apply_gen_kwargs(sampling_from_lm_eval(dict(kwargs)), self.gen_kwargs),
                                  seed=self.seed(repeat))
                for request, repeat in zip(requests, repeat_numbers(requests))
                for context, kwargs in [request.args]]
        if self.cache is None:
            return [completion.text for completion in self.backend.generate(ours, progress=self.progress)]
        return [answer["text"] for answer in generate_cached(self.backend, ours, self.cache, self.progress, "lm_eval")]

    def seed(self, repeat: int) -> int:
        """The seed of a request's repeat: the run's `--seeds` in order, else the repeat index."""
        return self.seeds[repeat] if self.seeds and repeat < len(self.seeds) else repeat


# ----- lm-eval tasks as our tasks ---------------------------------------------------------------------------------


_TASK_NAME = re.compile(r"^task:\s*['\"]?([^\s'\"#]+)", re.MULTILINE)


@functools.cache
def registry_task_names() -> frozenset[str]:
    """The `task:` names of lm-eval's own YAML files, read as text (about 10 s on two busy cores; lm-eval's index
    takes ~40 s), kept per lm-eval version in the harness cache folder."""
    from importlib.metadata import version

    from harness.tiny import default_cache_root

    saved = default_cache_root() / f"lm_eval-{version('lm_eval')}-task-names.json"
    if saved.is_file():
        return frozenset(json.loads(saved.read_text(encoding="utf-8")))
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    names = {name for path in root.rglob("*.yaml")
             for name in _TASK_NAME.findall(path.read_text(encoding="utf-8", errors="replace"))}
    store.write_json(saved, sorted(names))
    return frozenset(names)


def python_calls(yaml_path: Path) -> list[Path]:
    """The YAML files in `yaml_path`'s include chain that call Python (`!function`), lm-eval's own files aside."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    own = Path(lm_eval.tasks.__file__).parent.resolve()
    found, todo, seen = [], [Path(yaml_path).resolve()], set()
    while todo:
        path = todo.pop()
        if path in seen or own in path.parents:
            continue
        seen.add(path)
        if "!function" in path.read_text(encoding="utf-8", errors="replace"):
            found.append(path)
        includes = load_yaml(path, resolve_func=False, recursive=False).get("include") or []
        for include in [includes] if isinstance(includes, str) else includes:
            todo.append((path.parent / include).resolve())
    return found


def _check_folder_task(local, name: str, include: Path, trust_remote_code: bool) -> None:
    yaml_path = local.task_index[name].yaml_path
    where = yaml_path or include
    if name in registry_task_names():
        raise HarnessError(f"{where} defines task {name!r}, which is also a task of lm-eval's registry: rename it "
                           f"(e.g. `task: {name}_local`) so its results are not taken for lm-eval's")
    calls = python_calls(yaml_path) if yaml_path else []
    if calls and not trust_remote_code:
        raise HarnessError(f"task {name!r} runs Python from the data folder ({calls[0]} uses !function): pass "
                           "--trust-remote-code if you trust that code")


def task_manager(name: str, include: str | Path | None, trust_remote_code: bool = False):
    """A TaskManager that knows `name`: the include folder alone when it defines it, else lm-eval's registry too."""
    from lm_eval.tasks import TaskManager

    if include is not None:
        local = TaskManager(include_path=str(include), include_defaults=False)
        if name in local.all_tasks:
            _check_folder_task(local, name, Path(include), trust_remote_code)
            return local
    manager = TaskManager(include_path=str(include) if include else None)
    if name not in manager.all_tasks:
        where = f" or in the YAML files under {include}" if include else ""
        raise HarnessError(f"lm-eval has no task {name!r} in its registry{where}: check the name "
                           "(`lm_eval ls tasks`) or pass --data-dir DIR holding the task's YAML file")
    return manager


def _main_metric(manager, name: str) -> str:
    """The task's first configured metric (lm-eval's order), or the first it aggregates."""
    loaded = manager.load([name])["tasks"]
    if len(loaded) != 1:
        raise HarnessError(f"lm-eval name {name!r} is a group of {len(loaded)} tasks: pass its tasks one by one")
    task = next(iter(loaded.values()))
    metric_list = task.config.metric_list or []
    names = [entry["metric"] for entry in metric_list if isinstance(entry.get("metric"), str)]
    return names[0] if names else next(iter(task.aggregation()))


def plain_metrics(raw: dict[str, Any]) -> dict[str, float]:
    """{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...} -> {"acc": 0.5}: numbers only, plain keys."""
    metrics = {}
    for key, value in raw.items():
        metric, comma, kept_filter = key.partition(",")
        if not comma or isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            continue
        metrics[metric if kept_filter == "none" else f"{metric}_{kept_filter}"] = float(value)
    return metrics


def _references(logged: dict[str, Any], output_type: str) -> list[str]:
    target = logged["target"]
    if output_type == "multiple_choice" and isinstance(target, int):
        return [logged["arguments"][target][1].strip()]  # the gold option's text rather than its index
    return [str(item) for item in target] if isinstance(target, list) else [str(target)]


def sample_record(logged: dict[str, Any], output_type: str) -> dict[str, Any]:
    """One lm-eval logged sample in our samples.jsonl shape."""
    responses = logged["filtered_resps"]
    if output_type in ("multiple_choice", "loglikelihood"):
        predictions: list[Any] = [{"logprobs": [float(response[0]) for response in responses]}]
    else:
        predictions = [str(response) for response in responses]
    scores = {metric: [float(logged[metric])] for metric in logged["metrics"]
              if isinstance(logged.get(metric), int | float)}
    return {"doc_id": logged["doc_id"], "prompt": logged["arguments"][0][0],
            "references": _references(logged, output_type), "predictions": predictions, "scores": scores}


def doc_scores(logged_samples: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per metric key (as `plain_metrics` names it), the numeric per-document scores lm-eval logged."""
    found: dict[str, list[float]] = {}
    for logged in logged_samples:
        kept_filter = logged.get("filter", "none")
        for metric in logged["metrics"]:
            value = logged.get(metric)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found.setdefault(metric if kept_filter == "none" else f"{metric}_{kept_filter}", []).append(value)
    return found


def in_percent(metrics: dict[str, float], scores: dict[str, list[float]]) -> dict[str, Any]:
    """Means of per-document fractions in percent, with standard error and interval; other metrics as they are."""
    found: dict[str, Any] = dict(metrics)
    for key, value in metrics.items():
        values = scores.get(key)
        if not values or not all(0.0 <= v <= 1.0 for v in values) or not math.isclose(
                sum(values) / len(values), value, rel_tol=1e-9, abs_tol=1e-12):
            continue
        found.update(with_uncertainty(key, values, 100.0))
    return found


def run_lm_eval(manager, name: str, context: EvalContext) -> TaskResult:
    from lm_eval import simple_evaluate

    settings = context.settings
    seeds = settings.seeds
    if settings.samples:
        seeds = tuple((seeds or (0,))[0] + i for i in range(settings.samples))
    model = HarnessLM(context.backend, progress=settings.progress, cache=context.cache,
                      gen_kwargs=settings.gen_kwargs, seeds=seeds)
    task: Any = name
    if settings.samples:  # lm-eval's own way to draw k samples per document
        task = next(iter(manager.load([name])["tasks"].values()))
        task.config.repeats = settings.samples
    output = simple_evaluate(model, tasks=[task], task_manager=manager, limit=settings.limit, log_samples=True,
                             bootstrap_iters=0)
    (task_name, raw), = output["results"].items()
    output_type = output["configs"][task_name]["output_type"]
    logged = output["samples"][task_name]
    samples = [sample_record(entry, output_type) for entry in logged]
    details = {"lm_eval": {"version": output.get("lm_eval_version"), "output_type": output_type,
                           "num_fewshot": output["n-shot"].get(task_name)}}
    return TaskResult(samples=samples, metrics=in_percent(plain_metrics(raw), doc_scores(logged)), details=details)


def lm_eval_task(name: str, data_dir: str | Path | None, trust_remote_code: bool = False) -> Task:
    """Our Task for lm-eval task `name`; the name is checked (and the main metric found) before any model loads."""
    include = Path(data_dir).expanduser() if data_dir else None
    if include is not None and not include.is_dir():
        raise HarnessError(f"--data-dir {include} is not a folder: pass the folder holding the task's YAML file")
    manager = task_manager(name, include, trust_remote_code)
    return Task(
        name=f"lm_eval:{name}",
        description=f"lm-evaluation-harness task {name}",
        data=DataSource(local_file="", external=True),
        prompt=lambda doc: "",
        references=lambda doc: [],
        scorer=lambda doc, prediction: {},
        metrics=(),
        main_metric=_main_metric(manager, name),
        evaluate=lambda context: run_lm_eval(manager, name, context),
    )
