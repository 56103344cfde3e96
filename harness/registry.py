"""Task registry: tasks register by decorator, suites group them, third-party packages add theirs through the
`harness.tasks` entry-point group. Built-in tasks go through the same path as everyone else's.

A suite is an object: its tasks, optionally where each task sits in a hierarchy (dataset -> task -> capability,
as CUGE scores), and its aggregate, which turns the main metrics of the tasks a model has into the suite's score.
A suite named in `register_task` without `register_suite` is a plain mean over all of its tasks; a suite may name
the evaluation protocol its tasks run under by default (`trapo5` runs TRAPO's).

Protocols are named ways to run a family of tasks (the math presets): registered by name with their source, so
that `--protocol` can be checked before anything loads; each task says which protocols it knows.
"""

from __future__ import annotations

import importlib
import pkgutil
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from harness.errors import HarnessError
from harness.task import Task

TaskFactory = Callable[[], Task]


@dataclass(frozen=True)
class SuiteScore:
    """A suite's score for one model: the value, its named parts (CUGE's capabilities) and whether tasks were
    missing (a partial score covers only the tasks present)."""

    value: float
    parts: dict[str, float] = field(default_factory=dict)
    partial: bool = False


# (main metric per task the model has, every task of the suite) -> its score, or None when it cannot be given.
Aggregate = Callable[[dict[str, float], list[str]], SuiteScore | None]


def mean_of_tasks(scores: dict[str, float], tasks: list[str]) -> SuiteScore | None:
    """Plain mean of the main metrics, given only when the model has every task (averages over different task
    sets would not be comparable)."""
    if any(task not in scores for task in tasks):
        return None
    return SuiteScore(statistics.fmean(scores[task] for task in tasks))


@dataclass
class Suite:
    name: str
    description: str = ""
    aggregate: Aggregate = mean_of_tasks
    aggregate_name: str = "avg"  # the column header's word for the score
    hierarchy: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # task -> (dataset, task, capability)
    tasks: list[str] = field(default_factory=list)
    protocol: str | None = None  # the protocol its tasks run under unless --protocol says otherwise

    def score(self, scores: dict[str, float]) -> SuiteScore | None:
        return self.aggregate({t: v for t, v in scores.items() if t in self.tasks}, list(self.tasks))


_FACTORIES: dict[str, TaskFactory] = {}
_SUITES: dict[str, Suite] = {}
_PROTOCOLS: dict[str, str] = {}  # name -> its source
_LOADED = False
# Task names with this prefix are not ours: they are resolved by the lm-eval bridge.
LM_EVAL_PREFIX = "lm_eval:"


def register_task(name: str, suites: tuple[str, ...] = ()) -> Callable[[TaskFactory], TaskFactory]:
    def decorate(factory: TaskFactory) -> TaskFactory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"task {name!r} is registered twice")
        _FACTORIES[name] = factory
        for suite in suites:
            _SUITES.setdefault(suite, Suite(suite)).tasks.append(name)
        return factory

    return decorate


def register_suite(name: str, description: str = "", aggregate: Aggregate = mean_of_tasks,
                   aggregate_name: str = "avg", hierarchy: Mapping[str, tuple[str, ...]] | None = None,
                   protocol: str | None = None) -> Suite:
    """Declare how a suite aggregates (call before its tasks register, or after: the task list is kept)."""
    tasks = _SUITES[name].tasks if name in _SUITES else []
    _SUITES[name] = Suite(name, description, aggregate, aggregate_name, dict(hierarchy or {}), tasks, protocol)
    return _SUITES[name]


def register_protocol(name: str, source: str) -> None:
    _PROTOCOLS[name] = source


def protocols() -> dict[str, str]:
    """Protocol name -> its source, for --protocol and `harness tasks`."""
    _load_plugins()
    return dict(sorted(_PROTOCOLS.items()))


def suite_protocol(spec: str) -> str | None:
    """The default protocol of the suites named in a --tasks spec; two different ones are a user error."""
    _load_plugins()
    named = {_SUITES[part].protocol for part in (piece.strip() for piece in spec.split(","))
             if part in _SUITES and _SUITES[part].protocol}
    if len(named) > 1:
        raise HarnessError(f"the suites in --tasks {spec} run under different protocols ({', '.join(sorted(named))})"
                           ": pass --protocol NAME or evaluate them separately")
    return next(iter(named), None)


def _load_plugins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import harness.tasks as builtin

    for module in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"harness.tasks.{module.name}")
    for entry in entry_points(group="harness.tasks"):
        entry.load()


def task_names() -> list[str]:
    _load_plugins()
    return sorted(_FACTORIES)


def suites() -> dict[str, list[str]]:
    """Suite name -> its task names."""
    _load_plugins()
    return {name: list(suite.tasks) for name, suite in sorted(_SUITES.items())}


def get_suite(name: str) -> Suite | None:
    """The suite object, or None for a name no installed task declares (a result stored by other code)."""
    _load_plugins()
    return _SUITES.get(name)


def get_task(name: str) -> Task:
    _load_plugins()
    if name not in _FACTORIES:
        raise HarnessError(f"unknown task {name!r}: run `harness tasks` to list tasks and suites")
    return _FACTORIES[name]()


def expand(spec: str, with_teacher: bool = False) -> list[str]:
    """'instruct,math500' -> task names, in order, without repeats. 'all' means every task that can run with the
    given inputs (tasks that compare against a teacher only when one is given)."""
    _load_plugins()
    names: list[str] = []
    for part in (piece.strip() for piece in spec.split(",")):
        if not part:
            continue
        if part == "all":
            found = [name for name in sorted(_FACTORIES) if with_teacher or not get_task(name).needs_teacher]
        elif part in _SUITES:
            found = _SUITES[part].tasks
        elif part in _FACTORIES or part.startswith(LM_EVAL_PREFIX):
            found = [part]
        else:
            raise HarnessError(f"unknown task or suite {part!r}: run `harness tasks` to list them")
        names += [name for name in found if name not in names]
    if not names:
        raise HarnessError("no tasks given: pass --tasks NAME[,NAME...] (see `harness tasks`)")
    return names
