"""Fixtures for the trainer tests: the project's tiny teacher/student/data, and a runner for training commands."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Tiny:
    teacher: Path
    student: Path
    data: Path  # the folder holding train/valid/test/pretrain.jsonl


@pytest.fixture(scope="session")
def synth(tiny) -> Tiny:
    return Tiny(Path(tiny.teacher), Path(tiny.student), Path(tiny.data) / "synth")


@pytest.fixture
def overrides(synth):
    """`key=value` settings that point a run at the tiny models and data, writing to `output`."""
    return lambda output: base_overrides(synth, output)


@pytest.fixture
def launcher():
    return launch


def base_overrides(paths: Tiny, output: Path) -> list[str]:
    return [f"model={paths.student}", f"teacher={paths.teacher}", f"data_dir={paths.data}",
            f"output_dir={output}", "progress=false", "max_eval_samples=16"]


def launch(args: list[str], env_extra: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """A training command in a fresh Python process, as a user would run it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def kill_when(process: subprocess.Popen, marker: Path, seconds: float = 240) -> None:
    """SIGKILL `process` as soon as `marker` exists (a checkpoint completely written), as `kill -9` would."""
    import signal
    import time

    deadline = time.time() + seconds
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.stdout.read() if process.stdout else ""
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
