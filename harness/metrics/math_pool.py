"""A small persistent pool of verifier processes with a hard per-item timeout.

math-verify's own timeout uses SIGALRM, which only works in the main thread and cannot interrupt sympy while
it sits in C code (a huge integer power, say). Here every item runs in a separate process that is SIGKILLed
when it overruns, so a timeout holds from any thread and from inside multiprocessing workers (daemonic ones
included: the workers are plain subprocesses, not multiprocessing children).

Concurrent callers (threads scoring in parallel) each check out their own idle workers, up to the pool's size, and
run at the same time; a caller that finds every worker busy waits for one, and that wait counts against its
timeout, so `timeout` bounds the wall time of a one-pair call however many threads share the pool. Starting a
worker (a fresh interpreter importing sympy) is not an item's time, as before.
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
        self.announced = False  # its first child said `R`: the interpreter has started and imported sympy
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
        self.idle: list[_Worker] = []
        self.alive = 0  # workers started and not closed: idle ones plus those checked out by callers
        self.owner = os.getpid()
        self.free = threading.Condition()

    def run(self, items: Sequence[dict[str, Any]], timeout: float) -> list[dict[str, Any] | None]:
        if not items:
            return []
        began = time.monotonic()
        workers = self._check_out(min(self.size, len(items)), began + timeout)
        if not workers:
            return [None] * len(items)
        try:
            results = _Batch(workers).run(items, timeout, waited=time.monotonic() - began)
        except BaseException:  # an interrupted batch may leave items in flight: never hand those workers on
            self._discard(workers)
            raise
        self._check_in(workers)
        return results

    def warm_up(self, count: int) -> None:
        """Start `count` workers (at most the pool's size) and wait until each is ready to take an item."""
        workers = self._check_out(min(count, self.size), time.monotonic() + _STARTUP_TIMEOUT_S)
        try:
            _Batch(workers).wait_ready()
        except BaseException:
            self._discard(workers)
            raise
        self._check_in(workers)

    def _check_out(self, wanted: int, deadline: float) -> list[_Worker]:
        """Up to `wanted` workers for one caller: idle ones, then new ones while the pool is below its size;
        when every worker is busy, wait for one until `deadline` (then none)."""
        with self.free:
            while True:
                self.idle.sort(key=lambda worker: worker.child is None)  # ready ones first
                taken: list[_Worker | None] = list(self.idle[:wanted])
                del self.idle[:wanted]
                while len(taken) < wanted and self.alive < self.size:
                    self.alive += 1
                    taken.append(None)  # started below, outside the lock
                if taken:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self.free.wait(remaining)
        return [worker if worker is not None else _Worker() for worker in taken]

    def _check_in(self, workers: list[_Worker]) -> None:
        with self.free:
            if os.getpid() == self.owner:
                self.idle.extend(workers)
            self.free.notify_all()

    def _discard(self, workers: list[_Worker]) -> None:
        for worker in workers:
            worker.close()
        with self.free:
            self.alive -= len(workers)
            self.free.notify_all()

    def close(self) -> None:
        with self.free:
            for worker in self.idle:
                worker.close()
            self.alive -= len(self.idle)
            self.idle = []


class _Batch:
    """One caller's items on the workers it checked out; no state shared with other callers."""

    def __init__(self, workers: list[_Worker]) -> None:
        self.workers = workers  # replaced in place when one dies, so the caller returns live workers

    def run(self, items: Sequence[dict[str, Any]], timeout: float, waited: float = 0.0) -> list[dict[str, Any] | None]:
        """Each item gets `timeout` seconds, less the time the call stalled before sending it (nothing of the
        call in flight: waiting for a busy pool, or for a worker to replace a child killed for overrunning; not
        while a new worker starts)."""
        results: list[dict[str, Any] | None] = [None] * len(items)
        todo = list(range(len(items) - 1, -1, -1))
        busy: dict[int, _Worker] = {}
        stalled = waited
        while todo or busy:
            for worker in self.workers:
                if todo and worker.child is not None and worker.item is None:
                    item = todo.pop()
                    try:
                        worker.send(item, items[item], max(timeout - stalled, 1e-3))
                    except OSError:  # its process died between items: replace it, retry the item
                        todo.append(item)
                        self._replace(worker)
                        continue
                    busy[item] = worker
                    stalled = 0.0
            if todo and not busy and stalled >= timeout:
                todo.pop()  # it waited its whole timeout for a worker: unequal, like an overrun
                stalled = 0.0
                continue
            # a worker's start-up is not an item's time (the first calls would time out under load)
            idle = todo and not busy and all(worker.announced for worker in self.workers)
            began = time.monotonic()
            self._wait_and_collect(busy, results, timeout - stalled if idle else None)
            if idle:
                stalled += time.monotonic() - began
        return results

    def wait_ready(self) -> None:
        while any(worker.child is None for worker in self.workers):
            self._wait_and_collect({}, [], None)

    def _wait_and_collect(self, busy: dict[int, _Worker], results: list[dict[str, Any] | None],
                          limit: float | None) -> None:
        now = time.monotonic()
        waits = [w.deadline - now for w in busy.values()] + ([limit] if limit is not None else [])
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
                worker.announced = True
            elif worker.item is not None and int(head) == worker.request_id:
                results[worker.item] = json.loads(tail)
                busy.pop(worker.item, None)
                worker.item = None
            # anything else is the late answer of a child that was killed for overrunning

    def _replace(self, worker: _Worker) -> None:
        worker.close()
        self.workers[self.workers.index(worker)] = _Worker()


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
