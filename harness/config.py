"""One way to configure anything: a typed dataclass, filled from a YAML file, then `key=value` overrides.

Unknown keys are errors (a typo must not silently fall back to a default). Values in overrides are parsed as YAML
scalars, so `lr=5e-6`, `seeds=[10,20]` and `model.name=x` (nested dataclass fields) all work.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import HarnessError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _type_name(annotation: Any) -> str:
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML or override value against the annotated type, converting where the two only differ in form
    (lists to tuples, ints to floats, strings to paths, nested dataclasses). `true` is no number and `1.5` no
    whole number: a wrong type is an error naming the setting, not a surprise deep inside a run."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return from_dict(annotation, value, where=f"{where}.")
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], where) if len(options) == 1 else value
    if annotation is tuple and isinstance(value, list | tuple):
        return tuple(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise HarnessError(f"setting {where} must be a list, not {value!r}")
        items = typing.get_args(annotation)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_coerce(item, items[0], f"{where}[{i}]") for i, item in enumerate(value))
        if len(items) != len(value):
            raise HarnessError(f"setting {where} must be a list of {len(items)} values, not {list(value)!r}")
        return tuple(_coerce(item, kind, f"{where}[{i}]") for i, (item, kind) in enumerate(zip(value, items)))
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise HarnessError(f"setting {where} must be a number, not {value!r}") from None
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is Path and isinstance(value, str | Path):
        return Path(value)
    if annotation in (int, float, bool, str, Path) and (
        not isinstance(value, annotation) or (annotation is int and isinstance(value, bool))
    ):
        raise HarnessError(f"setting {where} must be {_type_name(annotation)}, not {value!r}")
    if origin is dict and not isinstance(value, Mapping):
        raise HarnessError(f"setting {where} must be a mapping of key: value, not {value!r}")
    return value


def from_dict(cls: type[T], values: Mapping[str, Any], where: str = "") -> T:
    """Build the dataclass `cls` from a mapping, refusing keys it does not declare."""
    types_by_name = _field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        known = ", ".join(sorted(types_by_name))
        raise HarnessError(f"unknown setting {where}{unknown[0]} for {cls.__name__}; known settings: {known}")
    kwargs = {key: _coerce(value, types_by_name[key], f"{where}{key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise HarnessError(f"invalid {cls.__name__} settings: {error}") from None


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """["a=1", "b.c=x"] -> {"a": 1, "b": {"c": "x"}}."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise HarnessError(f"override {pair!r} is not of the form key=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        target = result
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return result


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"no config file at {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise HarnessError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise HarnessError(f"{path} must hold a mapping of settings, not {type(values).__name__}")
    return values


def load(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (), **values: Any) -> T:
    """`cls` from keyword values, then the YAML file at `path`, then `key=value` overrides, later winning."""
    merged: dict[str, Any] = dict(values)
    if path is not None:
        merged = _merge(merged, read_yaml(path))
    merged = _merge(merged, parse_overrides(overrides))
    return from_dict(cls, merged)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config dataclass (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(config))
