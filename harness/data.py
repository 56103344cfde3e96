"""Loading a task's rows from a local data folder (laid out like `shared/data`) or from its hub dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from harness.errors import HarnessError
from harness.task import DataSource, Doc, Task


class MissingData(HarnessError):
    """Data files that are not there; the planner gathers these across tasks and names them all at once."""

    def __init__(self, files: list[str], message: str):
        super().__init__(message)
        self.files = files


def read_text(path: Path) -> str:
    """The file as UTF-8 text; any other encoding is an error naming the line that breaks."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise HarnessError(f"{path}:{line} is not UTF-8 text (byte {error.start}): convert the file to UTF-8, "
                           "e.g. with iconv") from None


def read_json_lines(path: Path) -> list[Doc]:
    """One JSON object per line, whatever the file is called (several data sets name such files .json)."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            message = f"{path}:{number} is not valid JSON ({error.msg}); fix or remove that line"
            raise HarnessError(message) from None
    return rows


def read_rows(path: Path) -> list[Doc]:
    """Rows of a .jsonl file (one object per line), a .csv file with a header row, or a .json file (a list, or an
    object holding one)."""
    if path.suffix == ".jsonl":
        return read_json_lines(path)
    text = read_text(path)
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise HarnessError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise HarnessError(f"{path} holds no list of rows")
    return data


def read_label_lines(path: Path) -> list[Doc]:
    """Rows of a file of `<label> <sentence>` lines (the SST-2 `stsa.binary.*` files of Kim 2014), as
    {"label": int, "sentence": str}."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        label, _, sentence = line.partition(" ")
        if not label.isdigit() or not sentence.strip():
            raise HarnessError(f"{path}:{number} is not a `<label> <sentence>` line; fix or remove that line")
        rows.append({"label": int(label), "sentence": sentence.strip()})
    return rows


def hub_rows(name: str, config: str | None = None, split: str = "train", data_files: str | None = None) -> list[Doc]:
    """Every row of a hub dataset, or of a local dataset folder (`datasets.load_dataset` reads both); `split` takes
    datasets' slicing syntax ("train[-64:]")."""
    import datasets

    return list(datasets.load_dataset(name, config, data_files=data_files, split=split))


def _from_hub(source: DataSource, what: str) -> list[Doc]:
    try:
        if source.hub_files:
            dataset = hub_rows(source.hub_id, data_files=source.hub_files)
        else:
            dataset = hub_rows(source.hub_id, source.hub_config, source.split)
    except Exception as error:  # network, auth and schema failures all end the same way for the user
        raise MissingData(
            [f"{source.local_file} (hub dataset {source.hub_id}: {type(error).__name__})"],
            f"{what} needs {source.local_file}: pass --data-dir DIR (a folder holding {source.local_file}) or set "
            f"HARNESS_DATA_DIR; loading hub dataset {source.hub_id} failed ({type(error).__name__})",
        ) from None
    rename = {theirs: ours for ours, theirs in source.fields.items()}
    return [{rename.get(key, key): value for key, value in row.items()} for row in dataset]


def _read_local(source: DataSource, path: Path, what: str) -> list[Doc]:
    if source.reader is None:
        return read_rows(path)
    try:
        return source.reader(path)
    except (OSError, KeyError, TypeError, ValueError, IndexError) as error:
        raise HarnessError(f"{what} cannot read {path} ({type(error).__name__}: {error}); the folder must hold the "
                           "files its SOURCE.md describes") from None


def load_rows(source: DataSource, data_dir: str | Path | None, what: str) -> list[Doc]:
    """Every row of `source`: built-in data first, then the local folder, then the hub. `what` names the
    reader in errors ("task icl_sst2", "the demonstration pool of icl_sst2")."""
    root = source.builtin() if source.builtin else (Path(data_dir).expanduser() if data_dir else None)
    files = (source.local_file, *source.more_files)
    if root is not None and all((root / name).exists() for name in files):
        return [row for name in files for row in _read_local(source, root / name, what)]
    if source.hub_id and root is None:  # a given folder is what the user meant: never fall back to the hub
        return _from_hub(source, what)
    missing = [str(root / name) if root else name for name in files if root is None or not (root / name).exists()]
    where = f"{', '.join(missing)} not found" if root else "no data folder was given"
    raise MissingData(missing, f"{what} needs {', '.join(files)} ({where}): pass --data-dir DIR or set "
                               "HARNESS_DATA_DIR to a folder laid out like shared/data")


def load_docs(task: Task, data_dir: str | Path | None, limit: int | None = None) -> list[Doc]:
    """The task's test documents: its rows, the protocol's selection of them, then the first `limit`."""
    if task.data.external:
        return []
    rows = load_rows(task.data, data_dir, f"task {task.name}")
    rows = task.select(rows) if task.select else rows
    rows = rows[:limit] if limit else rows
    _check_rows(task, rows)
    return rows


def load_pool(task: Task, data_dir: str | Path | None) -> list[Doc]:
    """The rows of a few-shot task's demonstration pool, checked like test rows."""
    assert task.fewshot is not None
    rows = load_rows(task.fewshot.pool, data_dir, f"the demonstration pool of {task.name}")
    if not rows:
        raise HarnessError(f"the demonstration pool of {task.name} ({task.fewshot.pool.local_file}) has no rows")
    for number, row in enumerate(rows):
        try:
            task.fewshot.demonstration(row)
            task.fewshot.label(row)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
            raise HarnessError(
                f"row {number} of the demonstration pool of {task.name} ({task.fewshot.pool.local_file}) is "
                f"malformed: {type(error).__name__} {error}; expected fields like those in the data folder's SOURCE.md"
            ) from None
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
