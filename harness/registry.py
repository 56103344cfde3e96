"""Task registry: tasks register by decorator, suites group them, third-party packages add theirs through the
`harness.tasks` entry-point group. Built-in tasks go through the same path as everyone else's.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points

from harness.errors import HarnessError
from harness.task import Task

TaskFactory = Callable[[], Task]

_FACTORIES: dict[str, TaskFactory] = {}
_SUITES: dict[str, list[str]] = {}
_LOADED = False
# Task names with this prefix are not ours: they are resolved by the lm-eval bridge.
LM_EVAL_PREFIX = "lm_eval:"


def register_task(name: str, suites: tuple[str, ...] = ()) -> Callable[[TaskFactory], TaskFactory]:
    def decorate(factory: TaskFactory) -> TaskFactory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"task {name!r} is registered twice")
        _FACTORIES[name] = factory
        for suite in suites:
            _SUITES.setdefault(suite, []).append(name)
        return factory

    return decorate


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
    _load_plugins()
    return {suite: list(names) for suite, names in sorted(_SUITES.items())}


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
            found = _SUITES[part]
        elif part in _FACTORIES or part.startswith(LM_EVAL_PREFIX):
            found = [part]
        else:
            raise HarnessError(f"unknown task or suite {part!r}: run `harness tasks` to list them")
        names += [name for name in found if name not in names]
    if not names:
        raise HarnessError("no tasks given: pass --tasks NAME[,NAME...] (see `harness tasks`)")
    return names
