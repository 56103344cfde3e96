"""Training data: JSONL rows to token ids, padded batches, and a resumable batch order.

A supervised example is the prompt (masked out of the loss) followed by the response and the end-of-sequence
token. Prompt and response are tokenised separately, so the boundary is exact whatever the tokenizer merges.
The batch order is a pure function of (seed, step), which is what makes resuming at any step exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.data import read_json_lines
from harness.errors import HarnessError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    response_ids: list[int]


@dataclass(frozen=True)
class Problem:
    """A verifiable training prompt (RLVR): the encoded prompt, the gold answer and the expert solution's ids."""

    prompt_ids: list[int]
    answer: str
    solution_ids: list[int]  # the worked solution and eos; empty when the data has none


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise HarnessError(f"no data file at {path}: check data_dir and the file name settings")
    rows = read_json_lines(path)
    if not rows:
        raise HarnessError(f"{path} holds no rows")
    return rows


def field(row: dict, name: str, path: Path) -> str:
    if name not in row:
        raise HarnessError(f"a row of {path} has no {name!r} field: set prompt_field/response_field to match")
    return str(row[name])


def encode_prompt(tokenizer, prompt: str, max_prompt_tokens: int) -> list[int]:
    """Prompt ids, keeping the last `max_prompt_tokens` (the end of a prompt says what to answer)."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return ids[-max_prompt_tokens:]


def encode_example(tokenizer, prompt: str, response: str, max_prompt_tokens: int, max_length: int) -> Example:
    prompt_ids = encode_prompt(tokenizer, prompt, max_prompt_tokens)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Example(prompt_ids, response_ids[: max(1, max_length - len(prompt_ids))])


def pad_examples(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (prompt and padding set to IGNORE_INDEX)."""
    width = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids = example.prompt_ids + example.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(example.prompt_ids) : len(ids)] = torch.tensor(example.response_ids)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids and mask with padding on the left, so every prompt ends at the last column."""
    width = max(len(ids) for ids in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence) :] = torch.tensor(list(sequence))
            mask[row, width - len(sequence) :] = 1
    return ids, mask


def text_chunks(tokenizer, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Documents joined by eos and cut into full `seq_len` chunks (the pre-training LM data)."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    chunks = [stream[start : start + seq_len] for start in range(0, len(stream) - seq_len + 1, seq_len)]
    if not chunks:
        raise HarnessError(f"pre-training text is shorter than one chunk of {seq_len} tokens: lower pretrain_seq_len")
    return chunks


def batch_indices(num_rows: int, batch_size: int, index: int, seed: int) -> list[int]:
    """Rows of global batch number `index` (0-based): epochs are seeded permutations, the last partial dropped."""
    per_epoch = num_rows // batch_size
    if per_epoch == 0:
        raise HarnessError(f"only {num_rows} rows for a batch of {batch_size}: lower batch_size")
    epoch, position = divmod(index, per_epoch)
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size].tolist()


def shard(items: Sequence, rank: int, world: int) -> list:
    return list(items[rank::world])


def chunked(items: Sequence, size: int) -> list[list]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]
