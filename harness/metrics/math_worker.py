"""Verifier worker process: runs math-verify (sympy) on answer pairs sent by `harness.metrics.math_pool`.

Started as `python -m harness.metrics.math_worker`. The process imports sympy once, warms it up, then forks a
server child that answers requests on stdin/stdout; when the parent kills an overrunning child, this process
forks a fresh warm one in milliseconds instead of paying a new interpreter start and the sympy import.

Protocol (one line each way, UTF-8 JSON): the child announces itself with `R <pid>`; a request is
`{"id": n, "timeout": s, "pairs": [[gold, pred], ...]}` (extracted answers: equal when any pair verifies) or
`{"id": n, "timeout": s, "completion": [gold, completion]}` (math-verify extracts the answer from the whole
completion itself); the answer is `<id> {"equal": bool, "extracted": str | null}`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import sys

# A runaway sympy computation (e.g. 9^{9^{9^{9}}}) should die of MemoryError, not take the machine with it.
_ADDRESS_SPACE_LIMIT = 6 * 2**30
# Hard self-destruct even if the parent is gone: SIGALRM's default action ends the process inside C code too.
_ALARM_GRACE_S = 10


def _verify_pairs(pairs: list[list[str]]) -> bool:
    from math_verify import parse, verify

    for gold, pred in pairs:
        gold_parsed = parse(_as_latex(gold), parsing_timeout=None)  # type: ignore[arg-type]
        pred_parsed = parse(_as_latex(pred), parsing_timeout=None)  # type: ignore[arg-type]
        if verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return True
    return False


def _verify_completion(gold: str, completion: str) -> dict:
    """math-verify's own reading: parse the gold, parse the whole completion, verify gold first."""
    from math_verify import parse, verify

    gold_parsed = parse(_as_latex(gold), parsing_timeout=None)  # type: ignore[arg-type]
    pred_parsed = parse(completion, parsing_timeout=None)  # type: ignore[arg-type]
    if not pred_parsed:
        return {"equal": False, "extracted": None}
    return {"equal": bool(verify(gold_parsed, pred_parsed, timeout_seconds=None)), "extracted": str(pred_parsed[-1])}


def _answer(request: dict) -> dict:
    if "completion" in request:
        return _verify_completion(*request["completion"])
    return {"equal": _verify_pairs(request["pairs"]), "extracted": None}


def _as_latex(answer: str) -> str:
    """math-verify extracts from $...$ or \\boxed{}; a bare extracted answer needs the delimiters back."""
    return answer if answer.startswith("$") else f"${answer}$"


def _read_line(fd: int, buffer: bytearray) -> bytes | None:
    while b"\n" not in buffer:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _serve(in_fd: int, out_fd: int) -> int:
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    os.write(out_fd, f"R {os.getpid()}\n".encode())
    buffer = bytearray()
    while True:
        line = _read_line(in_fd, buffer)
        if line is None:
            return 0
        request = json.loads(line)
        signal.alarm(math.ceil(request["timeout"]) + _ALARM_GRACE_S)
        try:
            answer = _answer(request)
        except (Exception, RecursionError):  # math-verify and sympy raise many types on odd input: unequal
            answer = {"equal": False, "extracted": None}
        signal.alarm(0)
        os.write(out_fd, f"{request['id']} {json.dumps(answer)}\n".encode())


def _warm_up() -> None:
    """Pay sympy's lazy imports and first-call caches once, before forking, so every child starts warm."""
    _verify_pairs([["\\frac{1}{2}", "0.5"], ["(1,2)", "\\{1,2\\}"], ["x^2+2x+1", "(x+1)^2"], ["x=3", "3"]])
    _verify_completion("x \\geq 5", "So $5 \\leq x$. The answer is \\boxed{[5, \\infty)}.")


def main() -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE_LIMIT, _ADDRESS_SPACE_LIMIT))
    except (ValueError, OSError):
        pass
    sys.setrecursionlimit(10_000)
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    _warm_up()
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(_serve(0, out_fd))
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return  # stdin closed: the parent is done with us


if __name__ == "__main__":
    main()
