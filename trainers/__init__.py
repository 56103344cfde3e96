"""Training methods (SFT, KD, SeqKD, MiniLLM, GRPO, TRAPO, CROPI) behind one entry point: `train(method, config_path,
overrides)`.

Each method is a `Trainer` subclass registered with `@register_trainer(name)` together with its config dataclass.
Built-ins go through the same registry as third-party trainers (entry-point group `harness.trainers`); their
modules are imported only when asked for, so listing methods does not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

__all__ = ["METHODS", "available_methods", "config_class", "get_trainer", "register_trainer", "train"]

_BUILTIN = {
    "sft": "harness.trainers.sft",
    "kd": "harness.trainers.kd",
    "seqkd": "harness.trainers.seqkd",
    "minillm": "harness.trainers.minillm",
    "grpo": "harness.trainers.grpo",
    "trapo": "harness.trainers.trapo",
    "cropi": "harness.trainers.cropi",
}
METHODS: tuple[str, ...] = tuple(_BUILTIN)
_REGISTRY: dict[str, type] = {}
_ENTRY_POINT_GROUP = "harness.trainers"


def register_trainer(name: str) -> Callable[[type], type]:
    """Class decorator: make a `Trainer` subclass available as `train(name, ...)`."""

    def decorate(cls: type) -> type:
        _REGISTRY[name] = cls
        cls.method = name
        return cls

    return decorate


def _plugin_entry_points() -> dict[str, Any]:
    return {point.name: point for point in entry_points(group=_ENTRY_POINT_GROUP)}


def available_methods() -> list[str]:
    """Built-in and plug-in method names, sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTRY) | set(_plugin_entry_points()))


def get_trainer(method: str) -> type:
    """The registered trainer class for `method`, importing its module on first use."""
    if method not in _REGISTRY:
        plugins = _plugin_entry_points()
        if method in _BUILTIN:
            importlib.import_module(_BUILTIN[method])
        elif method in plugins:
            loaded = plugins[method].load()
            if isinstance(loaded, type):
                _REGISTRY.setdefault(method, loaded)
    if method not in _REGISTRY:
        raise HarnessError(f"unknown training method {method!r}: choose one of {', '.join(available_methods())}")
    return _REGISTRY[method]


def config_class(method: str) -> type:
    """The config dataclass of `method` (what its YAML recipes deserialise into)."""
    return get_trainer(method).config_class


def train(
    method: str,
    config_path: str | Path | None = None,
    overrides: Iterable[str] = (),
    on_checkpoint: Callable[[Path, int], None] | None = None,
) -> list[Path]:
    """Train with `method` from a YAML recipe plus `key=value` overrides; return every complete checkpoint folder.

    Resumes from the last complete checkpoint in the output folder. `on_checkpoint(path, step)` runs on the main
    process as soon as each checkpoint is completely written.
    """
    from harness.config import load

    trainer_class = get_trainer(method)
    config = load(trainer_class.config_class, config_path, overrides)
    return trainer_class(config, on_checkpoint=on_checkpoint).run()
