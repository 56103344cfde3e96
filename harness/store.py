"""The results store: atomic files under the output root, and the generation cache that makes runs resumable.

Layout: `<root>/<model>/<task>/results.json` + `samples.jsonl`; the cache is `<root>/.cache/generations.sqlite`.
Every file is written to a temporary name and renamed, so a crash leaves either the old file or the new one.
A run holds a lock on each result folder it will write (`.lock`, released by the kernel even after `kill -9`),
and the folder's `.owner` names the weights its files came from; ownership is checked before the work and again
under the lock just before writing, so two runs of different weights under one name can never mix their files.
A damaged cache (not a database, a truncated file, an unreadable row) is moved aside with a one-line notice and
what it held is generated again.
The cache commits one transaction per chunk of requests, so after `kill -9` a rerun regenerates only the chunks
that never committed, in the same order and batches, and reaches the same results.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

SCHEMA_VERSION = 1


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()  # what open() gives a new file; read once, as os.umask is process-wide


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
            os.fchmod(file.fileno(), _FILE_MODE)  # not mkstemp's owner-only 0600: reports are for sharing
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


OWNER_FILE = ".owner"
LOCK_FILE = ".lock"


def stored_identity(folder: Path) -> str | None:
    """The weights the folder's files came from: results.json's record, else the `.owner` written before them."""
    try:
        stored = json.loads((folder / "results.json").read_text()).get("model_identity")
    except (OSError, json.JSONDecodeError, AttributeError):
        stored = None
    if stored is None and (folder / OWNER_FILE).is_file():
        stored = (folder / OWNER_FILE).read_text().strip() or None
    return stored


def check_owner(folder: Path, identity: str, overwrite: bool) -> None:
    """Refuse to replace results that belong to different weights stored under the same model name."""
    stored = None if overwrite else stored_identity(folder)
    if stored and stored != identity:
        raise HarnessError(
            f"{folder} holds results of other weights with the same model name: pass --name NEW_NAME to keep "
            "both, or --overwrite to replace them"
        )


class FolderLock:
    """An exclusive lock on one result folder for the length of a run; a second run is refused at once."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.handle = (folder / LOCK_FILE).open("a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise HarnessError(f"{folder} is being written by another run ({holder}): wait for it to finish, or "
                               "pass --name NEW_NAME") from None
        self.handle.truncate(0)
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()  # closing releases the lock


def write_results(folder: Path, record: dict[str, Any], samples: list[Any], overwrite: bool) -> Path:
    """samples.jsonl, then results.json (last: its presence means the task finished), after checking once more,
    under the folder's lock, that no other weights wrote there meanwhile."""
    check_owner(folder, record["model_identity"], overwrite)
    atomic_write(folder / OWNER_FILE, record["model_identity"] + "\n")
    write_jsonl(folder / "samples.jsonl", samples)
    write_json(folder / "results.json", record)
    return folder / "results.json"


def request_key(identity: str, request: Any) -> str:
    """Cache key of (model weights, full request including its seed)."""
    payload = json.dumps([identity, request], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class GenerationCache:
    """Generations keyed by `request_key`, in SQLite (WAL, one transaction per chunk)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            self._set_aside(error)
            self._open()

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def _set_aside(self, error: Exception) -> None:
        """Move the damaged database (and its WAL files) aside and start an empty one."""
        if getattr(self, "_db", None) is not None:
            self._db.close()
        moved = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{self.path}{suffix}").exists():
                os.replace(f"{self.path}{suffix}", f"{moved}{suffix}")
        print(f"warning: generation cache {self.path} is damaged ({error}); moved it to {moved.name}, "
              "regenerating what it held", file=sys.stderr)

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        try:
            return self._get_many(keys)
        except sqlite3.DatabaseError as error:
            self._set_aside(error)
            self._open()
            return {}

    def _get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        damaged: list[str] = []
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, value FROM generations WHERE key IN ({marks})"
            for key, value in self._db.execute(query, chunk):
                try:
                    found[key] = json.loads(value)  # generations, option scores and token log-probs alike
                except (TypeError, json.JSONDecodeError):
                    damaged.append(key)
        if damaged:
            with self._db:
                self._db.executemany("DELETE FROM generations WHERE key = ?", [(key,) for key in damaged])
            print(f"warning: {len(damaged)} unreadable row(s) in the generation cache {self.path} were dropped "
                  "and are regenerated", file=sys.stderr)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        with self._db:  # one transaction: all of the chunk or none of it
            self._db.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in items.items()],
            )

    def close(self) -> None:
        self._db.close()
