"""Benchmark: our math verifier against math-verify on the same pairs (throughput, ratio, agreement).

Pairs: the table in tests/metrics/test_math.py, plus gold-vs-gold and gold-vs-perturbed pairs from the seven
local RLVR sets (found via HARNESS_DATA_DIR or ../shared/data). math-verify runs in this process, sequentially,
as users call it; ours runs batched over its worker pool and also one call at a time.

    python bench/bench_verifier.py [--limit N] [--workers W]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import re
import time
from pathlib import Path

from math_verify import parse, verify

from harness.metrics.math import math_equal, math_equal_many
from harness.metrics.math_pool import get_pool

ROOT = Path(__file__).resolve().parents[1]


def _load_test_module():
    spec = importlib.util.spec_from_file_location("test_math_pairs", ROOT / "tests" / "metrics" / "test_math.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def perturb(gold: str) -> str:
    """A wrong answer close to the gold: the last integer in it plus one, else the gold plus one."""
    numbers = list(re.finditer(r"\d+", gold))
    if not numbers:
        return f"{gold}+1"
    last = numbers[-1]
    return gold[: last.start()] + str(int(last.group()) + 1) + gold[last.end():]


def build_pairs(limit: int | None) -> list[tuple[str, str]]:
    tests = _load_test_module()
    pairs = [(g, p) for g, p, _ in tests.ALL_PAIRS]
    if tests.DATA_DIR is not None:
        for golds in tests.local_golds().values():
            for gold in golds[:limit]:
                pairs += [(gold, gold), (gold, perturb(gold))]
    return pairs


def reference(gold: str, prediction: str) -> bool:
    def as_latex(s: str) -> str:
        return s if s.startswith("$") else f"${s}$"

    return verify(parse(as_latex(gold)), parse(as_latex(prediction)))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}; {usable} usable cores; Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="golds per data set (default: all)")
    parser.add_argument("--workers", type=int, default=None, help="verifier processes (default: min(4, cores))")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # math-verify logs every parse failure
    pairs = build_pairs(args.limit)
    print(f"machine: {machine()}")
    print(f"pairs: {len(pairs)}")

    # Each run gets a fresh pool (cold parse caches, like math-verify's in this process), started before the
    # clock as a long evaluation would.
    math_equal_many([("x+1", "1+x")] * 8, workers=args.workers)
    start = time.perf_counter()
    ours = math_equal_many(pairs, workers=args.workers)
    ours_s = time.perf_counter() - start

    get_pool(1).close()
    math_equal("x+1", "1+x")
    start = time.perf_counter()
    ours_single = [math_equal(g, p) for g, p in pairs]
    single_s = time.perf_counter() - start

    start = time.perf_counter()
    theirs = [reference(g, p) for g, p in pairs]
    theirs_s = time.perf_counter() - start

    agree = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(pairs)
    print(f"ours batched:     {len(pairs) / ours_s:9.1f} pairs/s ({ours_s:.2f} s)")
    print(f"ours one by one:  {len(pairs) / single_s:9.1f} pairs/s ({single_s:.2f} s)")
    print(f"math-verify:      {len(pairs) / theirs_s:9.1f} pairs/s ({theirs_s:.2f} s)")
    print(f"throughput ratio ours/math-verify: batched {theirs_s / ours_s:.1f}x, one by one {theirs_s / single_s:.1f}x")
    print(f"agreement with math-verify: {agree:.4f}; batched == one by one: {ours == ours_single}")
    print(f"true rate: ours {sum(ours) / len(pairs):.4f}, math-verify {sum(theirs) / len(pairs):.4f}")
    for (g, p), a, b in zip(pairs, ours, theirs, strict=True):
        if a != b:
            print(f"  differs: ours={a} math-verify={b} gold={g[:60]!r} pred={p[:60]!r}")
    print(f"ratio: {theirs_s / ours_s:.2f}")  # ours (batched) / math-verify throughput, last for scripts


if __name__ == "__main__":
    main()
