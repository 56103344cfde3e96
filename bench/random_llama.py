"""A randomly initialised Llama and realistic prompts for the speed benchmarks, built in seconds without downloads.

The tokenizer is a byte-level BPE trained on the same generated English-like text the prompts come from, so
prompt lengths in tokens vary the way real prompts do (tens to a few hundred tokens).
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no what up out who them some "
         "could into time only new its about two may then do first any my now such like our over man me even most "
         "made after also did many before must through back years where much your way well down should because "
         "each just those people how too little state good very make world still own see men work long get here "
         "between both life being under never day same another know while last might us great old year off come "
         "since against go came right used take three question answer number plus apple river mountain").split()


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def passage(rng: random.Random, min_words: int, max_words: int) -> str:
    target, parts = rng.randint(min_words, max_words), []
    while sum(len(part.split()) for part in parts) < target:
        parts.append(sentence(rng, rng.randint(5, 20)))
    return " ".join(parts)


def build(folder: Path, hidden: int, layers: int, dtype: str = "float32", vocab: int = 4000, seed: int = 0) -> Path:
    """A random Llama whose tokenizer learned English-like passages (bf16 halves the disk time on GPUs)."""
    from harness.tiny import random_checkpoint

    rng = random.Random(seed)
    texts = [passage(rng, 50, 200) for _ in range(2000)]
    return random_checkpoint(folder, texts, hidden=hidden, layers=layers, vocab=vocab, dtype=dtype, seed=seed,
                             intermediate=4 * hidden)


def machine() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}; "
            f"torch {torch.__version__}")


def add_model_arguments(parser) -> None:
    """The options both side-by-side benchmarks share: the random model's size, its dtype, device and batch."""
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None)


def ours_and_peer(folder: Path, args):
    """The checkpoint in our transformers backend and in lm-eval's HFLM, on the same device, dtype and batch size.

    Returns (device, synchronise, ours, peer); `synchronise` waits for the GPU so timings include its work.
    """
    import torch
    from lm_eval.models.huggingface import HFLM

    from harness.backends import load

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    synchronise = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ours = load(str(folder), device=device, dtype=args.dtype, batch_size=args.batch_size)
    peer = HFLM(pretrained=str(folder), device=device, dtype=args.dtype, batch_size=args.batch_size)
    return device, synchronise, ours, peer
