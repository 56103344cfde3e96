"""Shared fixtures: tiny real models built by the project itself, and the real data folder when it exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may download at test time: hub look-ups fail at once instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HARNESS_DATA_DIR", REPO.parent / "shared" / "data"))


def make_random_model(folder: Path, hidden: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised Llama (head_dim 64) with a byte-level BPE trained on a few sentences."""
    from harness.tiny import random_checkpoint

    texts = [f"The number {i} plus {i + 1} is {2 * i + 1}. Sort these words: pear apple fig." for i in range(300)]
    return random_checkpoint(folder, texts, hidden=hidden, layers=layers, seed=seed)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    return make_random_model(tmp_path_factory.mktemp("random-model"))


@pytest.fixture(scope="session")
def tiny():
    """The built-in tiny teacher, student and synthetic data (built once per machine, then cached)."""
    from harness import tiny

    return tiny.build(progress=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real evaluation data not found at {SHARED_DATA} (set HARNESS_DATA_DIR)")
    return SHARED_DATA
