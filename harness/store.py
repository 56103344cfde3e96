"""The results store: atomic files under the output root, and the generation cache that makes runs resumable.

Layout: `<root>/<model>/<task>/results.json` + `samples.jsonl`; the cache is `<root>/.cache/generations.sqlite`.
Every file is written to a temporary name and renamed, so a crash leaves either the old file or the new one.
The cache commits one transaction per chunk of requests, so after `kill -9` a rerun regenerates only the chunks
that never committed, in the same order and batches, and reaches the same results.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

SCHEMA_VERSION = 1


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def task_dir(root: Path, model_name: str, task: str) -> Path:
    return root / model_name / task.replace(":", "_").replace("/", "_")


def check_owner(folder: Path, identity: str, overwrite: bool) -> None:
    """Refuse to replace results that belong to different weights stored under the same model name."""
    existing = folder / "results.json"
    if overwrite or not existing.is_file():
        return
    try:
        stored = json.loads(existing.read_text()).get("model_identity")
    except (json.JSONDecodeError, AttributeError):
        return
    if stored and stored != identity:
        raise HarnessError(
            f"{folder} holds results of other weights with the same model name: pass --name NEW_NAME to keep "
            "both, or --overwrite to replace them"
        )


def request_key(identity: str, request: Any) -> str:
    """Cache key of (model weights, full request including its seed)."""
    payload = json.dumps([identity, request], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class GenerationCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, value FROM generations WHERE key IN ({marks})"
            found.update((key, json.loads(value)) for key, value in self._db.execute(query, chunk))
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        with self._db:  # one transaction: all of the chunk or none of it
            self._db.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in items.items()],
            )

    def close(self) -> None:
        self._db.close()
