"""Loading a task's rows from a local data folder (laid out like `shared/data`) or from its hub dataset."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError
from harness.task import Doc, Task


def read_json_lines(path: Path) -> list[Doc]:
    """One JSON object per line, whatever the file is called (several data sets name such files .json)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            message = f"{path}:{number} is not valid JSON ({error.msg}); fix or remove that line"
            raise HarnessError(message) from None
    return rows


def read_rows(path: Path) -> list[Doc]:
    """Rows of a .jsonl file (one object per line) or a .json file (a list, or an object holding one)."""
    if path.suffix == ".jsonl":
        return read_json_lines(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise HarnessError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise HarnessError(f"{path} holds no list of rows")
    return data


def _from_hub(task: Task) -> list[Doc]:
    source = task.data
    try:
        import datasets

        if source.hub_files:
            dataset = datasets.load_dataset(source.hub_id, data_files=source.hub_files, split="train")
        else:
            dataset = datasets.load_dataset(source.hub_id, source.hub_config, split=source.split)
    except Exception as error:  # network, auth and schema failures all end the same way for the user
        raise HarnessError(
            f"task {task.name} needs {source.local_file}: pass --data-dir DIR (a folder holding "
            f"{source.local_file}) or set HARNESS_DATA_DIR; loading hub dataset {source.hub_id} failed "
            f"({type(error).__name__})"
        ) from None
    rename = {theirs: ours for ours, theirs in source.fields.items()}
    return [{rename.get(key, key): value for key, value in row.items()} for row in dataset]


def _read_local(task: Task, path: Path) -> list[Doc]:
    if task.data.read is None:
        return read_rows(path)
    try:
        return task.data.read(path)
    except (OSError, KeyError, TypeError, ValueError, IndexError) as error:
        raise HarnessError(f"task {task.name} cannot read {path} ({type(error).__name__}: {error}); the folder "
                           "must hold the files its SOURCE.md describes") from None


def load_docs(task: Task, data_dir: str | Path | None, limit: int | None = None) -> list[Doc]:
    """The task's rows: built-in data first, then the local folder, then the hub."""
    source = task.data
    if source.external:
        return []
    root = source.builtin() if source.builtin else (Path(data_dir).expanduser() if data_dir else None)
    if root is not None and (root / source.local_file).is_file():
        rows = _read_local(task, root / source.local_file)
    elif source.hub_id and root is None:  # a given folder is what the user meant: never fall back to the hub
        rows = _from_hub(task)
    else:
        where = f"{root / source.local_file} does not exist" if root else "no data folder was given"
        raise HarnessError(f"task {task.name} needs {source.local_file} ({where}): pass --data-dir DIR or set "
                           "HARNESS_DATA_DIR to a folder laid out like shared/data")
    rows = [row for row in rows if source.keep(row)] if source.keep else rows
    rows = rows[:limit] if limit else rows
    _check_rows(task, rows)
    return rows


def _check_rows(task: Task, rows: list[Doc]) -> None:
    """Build every prompt and reference once up front, so a malformed row fails before the model is loaded."""
    if not rows:
        raise HarnessError(f"task {task.name} has no rows in {task.data.local_file}")
    for number, row in enumerate(rows):
        try:
            task.prompt(row)
            task.references(row)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
            raise HarnessError(
                f"row {number} of {task.name} ({task.data.local_file}) is malformed: {type(error).__name__} "
                f"{error}; expected fields like those in the data folder's SOURCE.md"
            ) from None
