"""A small persistent pool of verifier processes with a hard per-item timeout.

math-verify's own timeout uses SIGALRM, which only works in the main thread and cannot interrupt sympy while
it sits in C code (a huge integer power, say). Here every item runs in a separate process that is SIGKILLed
when it overruns, so a timeout holds from any thread and from inside multiprocessing workers (daemonic ones
included: the workers are plain subprocesses, not multiprocessing children).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_STARTUP_TIMEOUT_S = 120.0
_REPO_ROOT = Path(__file__).resolve().parents[2]
_WORKER_COMMAND = "python -m harness.metrics.math_worker"


class _Worker:
    """One `math_worker` process; `child` is the pid of its forked server, None while a new one starts."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.metrics.math_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0,
        )
        self.fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        self.buffer = b""
        self.child: int | None = None
        self.started = time.monotonic()
        self.item: int | None = None  # index into the current batch
        self.request_id = 0
        self.deadline = 0.0

    def send(self, item: int, request: dict[str, Any], timeout: float) -> None:
        self.request_id += 1
        self.item = item
        self.deadline = time.monotonic() + timeout
        line = json.dumps({**request, "id": self.request_id, "timeout": timeout}) + "\n"
        self.proc.stdin.write(line.encode())  # type: ignore[union-attr]

    def read_lines(self) -> list[str] | None:
        """Lines now available on the pipe; None at EOF (the worker process died)."""
        chunk = os.read(self.fd, 65536)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines]

    def kill_child(self) -> None:
        """Stop the item in flight; the worker forks a fresh child that announces itself with `R <pid>`."""
        if self.child is not None:
            try:
                os.kill(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.child = None
        self.item = None
        self.started = time.monotonic()

    def close(self) -> None:
        self.kill_child()
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class VerifierPool:
    """Runs verifier requests (see `math_worker`) on up to `size` workers; an item that overruns, or whose worker
    crashes, gets None."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.workers: list[_Worker] = []
        self.owner = os.getpid()
        self.lock = threading.Lock()

    def run(self, items: Sequence[dict[str, Any]], timeout: float) -> list[dict[str, Any] | None]:
        with self.lock:
            while len(self.workers) < min(self.size, len(items)):
                self.workers.append(_Worker())
            return self._run_locked(items, timeout)

    def _run_locked(self, items: Sequence[dict[str, Any]], timeout: float) -> list[dict[str, Any] | None]:
        results: list[dict[str, Any] | None] = [None] * len(items)
        todo = list(range(len(items) - 1, -1, -1))
        busy: dict[int, _Worker] = {}
        while todo or busy:
            for worker in self.workers:
                if todo and worker.child is not None and worker.item is None:
                    item = todo.pop()
                    try:
                        worker.send(item, items[item], timeout)
                    except OSError:  # its process died between items: replace it, retry the item
                        todo.append(item)
                        self._replace(worker)
                        continue
                    busy[item] = worker
            self._wait_and_collect(busy, results)
        return results

    def _wait_and_collect(self, busy: dict[int, _Worker], results: list[dict[str, Any] | None]) -> None:
        now = time.monotonic()
        waits = [w.deadline - now for w in busy.values()]
        waits += [w.started + _STARTUP_TIMEOUT_S - now for w in self.workers if w.child is None]
        wait = max(0.0, min(waits, default=0.0))
        readable, _, _ = select.select([w.fd for w in self.workers], [], [], wait)
        for worker in list(self.workers):
            if worker.fd in readable:
                self._handle_output(worker, busy, results)
        now = time.monotonic()
        for item, worker in list(busy.items()):
            if worker.item == item and now >= worker.deadline:
                worker.kill_child()  # results[item] stays None
                del busy[item]
        for worker in self.workers:
            if worker.child is None and now >= worker.started + _STARTUP_TIMEOUT_S:
                raise RuntimeError(f"math verifier worker did not start: {_WORKER_COMMAND}")

    def _handle_output(self, worker: _Worker, busy: dict[int, _Worker], results: list[dict[str, Any] | None]) -> None:
        lines = worker.read_lines()
        if lines is None:  # the worker process itself died: replace it, its item counts as unequal
            if worker.item is not None:
                busy.pop(worker.item, None)
            self._replace(worker)
            return
        for line in lines:
            head, _, tail = line.partition(" ")
            if head == "R":
                if worker.item is not None:  # the child crashed (e.g. a segfault in deep recursion)
                    busy.pop(worker.item, None)
                    worker.item = None
                worker.child = int(tail)
            elif worker.item is not None and int(head) == worker.request_id:
                results[worker.item] = json.loads(tail)
                busy.pop(worker.item, None)
                worker.item = None
            # anything else is the late answer of a child that was killed for overrunning

    def _replace(self, worker: _Worker) -> None:
        worker.close()
        self.workers[self.workers.index(worker)] = _Worker()

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []


_pool: VerifierPool | None = None
_pool_lock = threading.Lock()


def get_pool(size: int) -> VerifierPool:
    """The process-wide pool, rebuilt after a fork (a forked child must not share its parent's pipes)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.owner != os.getpid():
            _pool = VerifierPool(size)
        _pool.size = max(_pool.size, size)
        return _pool


@atexit.register
def _close_pool() -> None:
    if _pool is not None and _pool.owner == os.getpid():
        _pool.close()
