"""Data-parallel evaluation (`harness eval --data-parallel N`) on a real tiny model, two CPU replicas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_cli import cached_rows, data_dir, harness, shared_data_rows  # noqa: F401, F811  (fixtures: the dolly rows)

from harness.replicas import shares


def test_cores_are_dealt_in_contiguous_near_equal_shares():
    assert shares([[0], [1], [2], [3], [4]], 2) == [[0, 1, 2], [3, 4]]
    assert shares([[0, 1], [2, 3], [4, 5]], 3) == [[0, 1], [2, 3], [4, 5]]  # tensor-parallel GPU groups stay whole
    assert shares([[7]], 1) == [[7]]


def replica_processes(parent: int) -> list[psutil.Process]:
    """The replica processes of a `harness eval` (spawned children, not multiprocessing's resource tracker)."""
    try:
        children = psutil.Process(parent).children()
    except psutil.NoSuchProcess:
        return []
    return [child for child in children if "spawn_main" in " ".join(child.cmdline())]


def kill_one_replica_after_cached(args: list[str], root: Path, rows: int, replica: int) -> tuple[int, str, int]:
    """Start `harness ARGS --output-dir ROOT` and `kill -9` one replica once `rows` answers are cached; the exit
    status, stderr and the count cached at the end."""
    process = subprocess.Popen([sys.executable, "-m", "harness", *args, "--output-dir", str(root)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while cached_rows(root) < rows and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    replicas = replica_processes(process.pid)
    assert len(replicas) == 2, "the run ended before the kill"
    os.kill(replicas[replica].pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr, cached_rows(root)


def results(root: Path) -> list[tuple[dict, list[dict]]]:
    found = []
    for path in sorted(root.glob("*/*/results.json")):
        record = json.loads(path.read_text())
        samples = [json.loads(line) for line in (path.parent / "samples.jsonl").read_text().splitlines()]
        found.append((record["metrics"], samples))
    return found


@pytest.mark.slow
def test_two_replicas_match_one_and_a_killed_replica_is_finished_from_the_cache(random_model, data_dir, tmp_path):  # noqa: F811
    # 12 documents x 5 seeds: 8 chunks of 8 generations (batch size 2), dealt to the replicas in turn
    args = ["eval", "--model", str(random_model), "--tasks", "dolly", "--data-dir", str(data_dir),
            "--batch-size", "2", "--gen-kwargs", "max_new_tokens=24", "--device", "cpu", "--no-progress"]
    single = harness(*args, "--output-dir", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr

    # replica 1 still owes the second chunk of reference-loss log-probs when it dies
    returncode, stderr, done_before = kill_one_replica_after_cached([*args, "--data-parallel", "2"], tmp_path / "dp", 8,
                                                                    replica=1)
    [message] = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert returncode == 2 and message.startswith("error: data-parallel replica 1"), stderr
    assert "rerun the same command" in message and "Traceback" not in stderr and 0 < done_before < 72
    assert not list((tmp_path / "dp").glob("*/*/results.json"))

    rerun = harness(*args, "--data-parallel", "2", "--output-dir", str(tmp_path / "dp"))
    assert rerun.returncode == 0, rerun.stderr
    assert results(tmp_path / "dp") == results(tmp_path / "single")  # identical samples and metrics
    assert cached_rows(tmp_path / "dp") == 60 + 12  # generations and reference-loss log-probs, each once
