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
    """A randomly initialised Llama (head_dim 64) with a byte-level BPE tokenizer trained on a few sentences."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [f"The number {i} plus {i + 1} is {2 * i + 1}. Sort these words: pear apple fig." for i in range(300)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=alphabet))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_attention_heads=hidden // 64,
                         num_key_value_heads=hidden // 64, head_dim=64, num_hidden_layers=layers,
                         intermediate_size=2 * hidden, max_position_embeddings=512, eos_token_id=0, bos_token_id=0,
                         pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
