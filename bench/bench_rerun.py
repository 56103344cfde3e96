"""What rerunning a finished evaluation costs: `harness eval` twice on the same output folder, timed from outside.

The first run answers every request (generations, reference-loss log-probs) and commits them to the result cache;
the reruns find every answer there. Each run is a fresh `harness eval` process, so interpreter start-up and imports
are counted: a rerun must not load the model or import torch. The target is rerun <= 0.05 of the first run; the
last line is `ratio: first / fastest rerun`. The instruction suite needs the MiniLLM files under --data-dir; with
`--tasks synth` it runs on the built-in synthetic data.

    python bench/bench_rerun.py [--tasks instruct] [--limit 50] [--data-dir ../shared/data] [--reruns 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_eval(arguments: list[str]) -> float:
    command = [sys.executable, "-m", "harness", "eval", *arguments, "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def torch_imported(arguments: list[str]) -> bool:
    """Whether a cached run imports torch at all (python -X importtime lists every module it imports)."""
    command = [sys.executable, "-X", "importtime", "-m", "harness", "eval", *arguments, "--no-progress"]
    found = subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return any(line.rstrip().endswith("| torch") for line in found.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="instruct")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model", help="checkpoint (default: the built-in tiny teacher)")
    parser.add_argument("--reruns", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-rerun-") as output:
        arguments = ["--tasks", args.tasks, "--limit", str(args.limit), "--data-dir", args.data_dir,
                     "--output-dir", output, *(["--model", args.model] if args.model else [])]
        first = timed_eval(arguments)
        reruns = [timed_eval(arguments) for _ in range(args.reruns)]
        imports_torch = torch_imported(arguments)
    rerun = min(reruns)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"harness eval --tasks {args.tasks} --limit {args.limit}: first run {first:.1f} s; reruns "
          f"{', '.join(f'{seconds:.2f}' for seconds in reruns)} s (fastest {rerun / first:.3f} of the first run); "
          f"a rerun imports torch: {'yes' if imports_torch else 'no'}")
    print(f"ratio: {first / rerun:.2f}")  # first / rerun, last for scripts


if __name__ == "__main__":
    main()
