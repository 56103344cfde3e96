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


# ----- broken and unsafe checkpoints, written from a good one ----------------------------------------------------

PLANTED = "planted-code-ran"


class Planted:
    """Unpickling this object runs `open(path, "w")`: proof that a loader executed code it should have refused."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def copy_checkpoint(source: Path, folder: Path) -> Path:
    import shutil

    shutil.copytree(source, folder)
    return folder


def broken_checkpoint(source: Path, folder: Path, kind: str) -> Path:
    """A copy of the checkpoint `source` damaged one way: config-only, truncated, random, pickled, custom-code,
    bad-config. A pickled checkpoint's weights run code when unpickled unsafely; the file they would create is
    `folder / PLANTED`."""
    import json
    import pickle

    folder = copy_checkpoint(source, folder)
    weights = folder / "model.safetensors"
    if kind == "config-only":
        for path in folder.iterdir():
            if path.name != "config.json":
                path.unlink()
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "random":
        weights.write_bytes(os.urandom(4096))
    elif kind == "pickled":
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Planted(folder / PLANTED)}, protocol=2))
    elif kind == "custom-code":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "modeling_evil.py").write_text(f"open({str(folder / PLANTED)!r}, 'w')\n")
    elif kind == "bad-config":
        (folder / "config.json").write_text('{"model_type": "llama", ')
    else:
        raise ValueError(kind)
    return folder


class TokenizerSpy:
    """A backend's own tokenizer, recording the longest text it was asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, *args, **kwargs):
        for text in [texts] if isinstance(texts, str) else texts:
            self.longest = max(self.longest, len(text))
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


HUGE_PROMPT = "The number 7 plus 8 is 15. Sort these words: pear apple fig. " * 80_000  # 5 MB
