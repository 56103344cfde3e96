"""The tiny default's few-shot family (suite `icl_synth`): PICL's classification protocol on synthetic rules.

Each task is a simple rule over inputs the tiny tokenizer knows (numbers and words of `harness.tiny_data`), and its
two label words are invented city names drawn per task, unrelated to the rule: only the demonstrations reveal which
word means what, so a model scores above chance only by learning in context. Evaluated exactly like `icl_cls`
(tasks/icl.py): 4 balanced shots, five seeds, the likeliest of " word\\n". The data is built here, on first use,
into a folder named by its content; it needs no download and leaves the tiny teacher, student and data untouched.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.registry import register_task
from harness.store import atomic_write
from harness.task import DataSource, Doc, Task
from harness.tasks.icl import SHOTS, ICLSet, icl_task
from harness.tiny_data import CAPITALS, WORDS

VERSION = "icl-synth-v1"
ANIMALS = {"cat", "dog", "fish", "bird", "frog", "owl", "bee"}
POOL_SIZE, TEST_SIZE = 64, 100

Rule = Callable[[random.Random], tuple[str, int]]  # rng -> (input text, label 0 or 1)


def _parity(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(0, 49)
    return str(n), n % 2


def _size(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(0, 49)
    return str(n), int(n >= 25)


def _animal(rng: random.Random) -> tuple[str, int]:
    word = rng.choice(WORDS)
    return word, int(word in ANIMALS)


RULES: dict[str, Rule] = {"parity": _parity, "size": _size, "animal": _animal}


def label_words(name: str) -> tuple[str, str]:
    """Two invented city names for the task's labels, fixed by the task's name."""
    first, second = random.Random(f"{VERSION}-{name}").sample(sorted(CAPITALS.values()), 2)
    return first, second


def _rows(rule: Rule, rng: random.Random, size: int) -> list[Doc]:
    """`size` rows, half of each label (drawn until both halves are full)."""
    halves: dict[int, list[Doc]] = {0: [], 1: []}
    while min(len(half) for half in halves.values()) < size // 2:
        text, label = rule(rng)
        if len(halves[label]) < size // 2:
            halves[label].append({"text": text, "label": label})
    rows = halves[0] + halves[1]
    rng.shuffle(rows)
    return rows


def build(out_root: Path | None = None) -> Path:
    """The data folder: `icl_synth/<rule>/{pool,test}.jsonl` for every rule."""
    files = {}
    for name, rule in RULES.items():
        rng = random.Random(f"{VERSION}-{name}-rows")
        for split, size in (("pool", POOL_SIZE), ("test", TEST_SIZE)):
            rows = _rows(rule, rng, size)
            files[f"icl_synth/{name}/{split}.jsonl"] = "".join(json.dumps(row) + "\n" for row in rows)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    folder = (out_root or Path(tempfile.gettempdir())) / f"harness-{VERSION}-{digest}"
    for relative, text in files.items():
        if not (folder / relative).is_file():  # named by content, so an existing file is already the right one
            atomic_write(folder / relative, text)
    return folder


def _register(name: str) -> None:
    spec = ICLSet(
        template=lambda doc: f"Input: {doc['text']}\nLabel:",
        words=label_words(name),
        label=lambda doc: int(doc["label"]),
        test=DataSource(f"icl_synth/{name}/test.jsonl", builtin=build),
        pool=DataSource(f"icl_synth/{name}/pool.jsonl", builtin=build),
    )

    @register_task(f"icl_synth_{name}", suites=("icl_synth",))
    def factory() -> Task:
        return icl_task(f"icl_synth_{name}", spec,
                        f"Synthetic {name} rule with arbitrary label words {'/'.join(spec.words)}: {SHOTS}-shot ICL")


for _name in RULES:
    _register(_name)
