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


def make_random_t5(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised T5 (2+2 layers, d_model 64) with a tiny word-piece-free tokenizer: every character of
    a few Chinese and English sentences is a token, `</s>` ends each encoded text as T5's tokenizer does."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    texts = ["阅读下面的材料，回答问题。我喜欢看电影，也喜欢听音乐。", "The number 12 plus 30 is 42.",
             "下面这句现代文描述的是哪一句古诗？春风又绿江南岸。解答：答案是880米。"]
    chars = sorted({char for text in texts for char in text} | set("0123456789 "))
    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *chars])}
    tokenizer_model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer_model.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer_model.decoder = decoders.Fuse()
    tokenizer_model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_model, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_decoder_layers=2,
                      num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def random_t5(tmp_path_factory) -> Path:
    return make_random_t5(tmp_path_factory.mktemp("random-t5"))


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
    elif kind == "unknown-architecture":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
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
