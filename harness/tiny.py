"""The built-in tiny default: synthetic data, a byte-level BPE tokenizer, a trained teacher and an untrained student.

Everything is built locally in a few CPU minutes, so examples and tests run without any download. The build lands
in ``<cache root>/<VERSION>/`` once: a file lock makes a second process wait rather than build twice, and the result
appears by an atomic rename, so a reader never sees a half-written folder. Data and tokenizer are byte-identical
across builds; the teacher's weights are seeded but multithreaded float sums may differ in the last bits.

Layout: ``teacher/`` and ``student/`` are HF folders (LlamaForCausalLM, float32, shared tokenizer, head_dim 64 as
vLLM's CPU attention needs); ``data/synth/{train,valid,test,pretrain}.jsonl`` follows the shared data folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError
from harness.tiny_data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, generate, write_splits

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

VERSION = "tiny-v2"  # bump whenever data, tokenizer or training recipe changes: old caches then stay unused
EOT = "<|endoftext|>"
SEED = 0
VOCAB_SIZE = 1000
# The GPT-2 split, except that each fixed piece of the Alpaca template is one pre-token, so BPE learns it as a
# single token: prompts shrink from ~50 to ~10-30 tokens, which is what makes CPU training of the teacher quick.
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclass(frozen=True)
class TinyShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


# Two wide layers learnt more than four for the same CPU time in our runs; 2.2M parameters (student 0.55M).
TEACHER = TinyShape(hidden=256, layers=2, heads=4, intermediate=768)
STUDENT = TinyShape(hidden=128, layers=2, heads=2, intermediate=256)


@dataclass(frozen=True)
class TrainRecipe:
    steps: int = 1000
    batch_size: int = 64
    peak_lr: float = 1.5e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01


@dataclass(frozen=True)
class TinyPaths:
    teacher: Path  # HF-format folder (config.json, model.safetensors, tokenizer files)
    student: Path  # HF-format folder, same tokenizer
    data: Path  # laid out like the shared data folder: data/synth/{train,valid,test,pretrain}.jsonl


def default_cache_root() -> Path:
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "harness"


def _paths(folder: Path) -> TinyPaths:
    return TinyPaths(teacher=folder / "teacher", student=folder / "student", data=folder / "data")


def build(cache_root: Path | None = None, force: bool = False, progress: bool = True) -> TinyPaths:
    """Build the tiny teacher, student and data once under ``cache_root`` (default: the harness cache)."""
    return _paths(cached_build(VERSION, lambda folder: _build_into(folder, progress), cache_root, force))


def cached_build(version: str, build_into: Callable[[Path], None], cache_root: Path | None = None,
                 force: bool = False) -> Path:
    """``<cache root>/<version>``, made once by ``build_into(folder)``: locked, and swapped in by one rename."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = root / version
    if final.is_dir() and not force:
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HarnessError(f"cannot create the cache folder {root} ({error.strerror}); set HARNESS_CACHE "
                           "to a writable folder") from None
    with locked(root / f"{version}.lock"):
        if final.is_dir() and not force:  # another process finished it while we waited
            return final
        staging = Path(tempfile.mkdtemp(prefix=f"{version}.building-", dir=root))
        try:
            build_into(staging)
            _replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _replace(staging: Path, final: Path) -> None:
    """Swap ``staging`` in as ``final``; an old build is first renamed aside so the swap itself is one rename."""
    if final.exists():
        retired = final.with_name(f"{final.name}.old-{os.getpid()}")
        final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(final)


def _build_into(folder: Path, progress: bool) -> None:
    import torch

    splits = generate(seed=SEED)
    write_splits(folder / "data" / "synth", splits)
    tokenizer = train_tokenizer(_tokenizer_corpus(splits))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))  # more threads than cores only adds contention
    try:
        teacher = make_model(TEACHER, tokenizer, seed=SEED)
        train_teacher(teacher, tokenizer, splits["train"], TrainRecipe(), progress)
    finally:
        torch.set_num_threads(threads)
    _save(teacher, tokenizer, folder / "teacher")
    _save(make_student(tokenizer), tokenizer, folder / "student")


def save_student(folder: Path) -> Path:
    """The untrained tiny student alone, equal to the one `build` makes, in seconds: no teacher is trained.
    For recipes that start from the student and never read the teacher (PICL and ExtraLM)."""
    tokenizer = train_tokenizer(_tokenizer_corpus(generate(seed=SEED)))
    _save(make_student(tokenizer), tokenizer, folder)
    return folder


def make_student(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return make_model(STUDENT, tokenizer, seed=SEED + 1)


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _tokenizer_corpus(splits: dict[str, list[dict]]) -> list[str]:
    # Prompt and output are separate texts: both are encoded separately in training, so no merge may span them.
    rows = splits["train"]
    return [row["prompt"] for row in rows] + [row["output"] for row in rows] + [r["text"] for r in splits["pretrain"]]


def _template_pieces() -> list[str]:
    # Trailing whitespace stays out of the pieces: scoring moves a context's trailing whitespace to the
    # continuation (lm-eval's convention), which must not split a learned token in two.
    pieces = {piece.rstrip() for template in (PROMPT_NO_INPUT, PROMPT_WITH_INPUT)
              for piece in re.split(r"\{\w+\}", template) if piece.strip()}
    return sorted(pieces, key=len, reverse=True)  # longest first: the regex alternation takes the first match


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ``<|endoftext|>`` as bos/eos/pad; encoding adds no special tokens by itself."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    split = "|".join(re.escape(piece) for piece in _template_pieces()) + "|" + _GPT2_SPLIT
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   clean_up_tokenization_spaces=False, model_max_length=1024)


def make_model(shape: TinyShape, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eot = tokenizer.convert_tokens_to_ids(EOT)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        head_dim=64, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    return model


def encode_sft(tokenizer: PreTrainedTokenizerFast, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per row: prompt + output + eos, with the prompt masked out of the loss (-100)."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    encoded = []
    for row in rows:
        prompt = tokenizer.encode(row["prompt"], add_special_tokens=False)
        response = tokenizer.encode(row["output"], add_special_tokens=False) + [eot]
        encoded.append((prompt + response, [-100] * len(prompt) + response))
    return encoded


def _batches(examples: list[tuple[list[int], list[int]]], recipe: TrainRecipe, pad_id: int,
             seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless right-padded batches; each is drawn from a length-sorted pool so little compute goes to padding."""
    import torch

    rng = random.Random(seed)
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        pool = 8 * recipe.batch_size
        for start in range(0, len(order) - recipe.batch_size + 1, pool):
            chunk = sorted(order[start:start + pool], key=lambda i: len(examples[i][0]))
            groups = [chunk[i:i + recipe.batch_size] for i in range(0, len(chunk), recipe.batch_size)]
            rng.shuffle(groups)
            for group in groups:
                width = max(len(examples[i][0]) for i in group)
                ids = torch.full((len(group), width), pad_id)
                labels = torch.full((len(group), width), -100)
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for row, i in enumerate(group):
                    tokens, targets = examples[i]
                    ids[row, :len(tokens)] = torch.tensor(tokens)
                    labels[row, :len(tokens)] = torch.tensor(targets)
                    mask[row, :len(tokens)] = 1
                yield ids, mask, labels


def _cosine_lr(step: int, recipe: TrainRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.peak_lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_teacher(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, rows: list[dict],
                  recipe: TrainRecipe, progress: bool) -> float:
    """Plain SFT (AdamW, warmup + cosine), loss on response tokens only; returns the last step's loss."""
    import torch
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.peak_lr, weight_decay=recipe.weight_decay)
    batches = _batches(encode_sft(tokenizer, rows), recipe, tokenizer.pad_token_id, seed=SEED)
    model.train()
    bar = tqdm(range(recipe.steps), desc="training tiny teacher", disable=not progress)
    loss = torch.tensor(float("nan"))
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, recipe)
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return loss.item()


def random_checkpoint(folder: Path, texts: list[str], hidden: int = 128, layers: int = 2, vocab: int = 320,
                      dtype: str = "float32", seed: int = 0, intermediate: int | None = None) -> Path:
    """An untrained Llama (head_dim 64) with a plain byte-level BPE learned from `texts`, saved in HF format:
    for tests and benchmarks that need a real checkpoint of a given size but no trained behaviour."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOT, bos_token=EOT, pad_token=EOT)
    torch.manual_seed(seed)
    heads = hidden // 64
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_attention_heads=heads,
                         num_key_value_heads=heads, head_dim=64, num_hidden_layers=layers,
                         intermediate_size=intermediate or 2 * hidden, max_position_embeddings=2048,
                         eos_token_id=0, bos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
