"""Synthetic instruction data with exact answers, for the built-in tiny teacher and student.

Eight task families, each with several phrasings: addition, subtraction, sorting numbers, reversing a word list,
copying a word list, counting list items, capital-city lookup in an invented fact table, and one classification
family (parity, whose rows carry ``choices``). Rows follow the MiniLLM data files (``instruction``, ``input``,
``output``, Alpaca ``prompt``) plus ``family``. Everything is drawn from one seeded ``random.Random``, so a build is
reproducible byte for byte; held-out prompts are drawn first and then barred from train and the pre-training text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# Invented, so no pre-trained model could know them: the answers come from this table alone.
CAPITALS = {
    "Zorbia": "Quelth", "Marvania": "Tobrin", "Plendor": "Askavel", "Ustrelia": "Wemmoth", "Grallick": "Fenwise",
    "Norvosk": "Dapplin", "Ketheria": "Sorrow Bay", "Ombria": "Lutz", "Vashmere": "Cindral", "Trelland": "Porvik",
    "Quorvia": "Miradel", "Bastovia": "Hollen", "Eskadar": "Rimbault", "Feloria": "Gantry", "Yrsland": "Osk",
    "Drummel": "Veyra", "Calvoria": "Tessit", "Pellucia": "Brandholm", "Ragnovia": "Stelk", "Sindara": "Amberlow",
}
WORDS = (
    "cat dog sun moon tree fish bird star cup pen box hat car bus map key rain snow milk bread "
    "lamp door ship frog owl bee rose leaf stone coin"
).split()
PARITY_CHOICES = ["even", "odd"]
# Families a small model learns slowly (they need attention to the input, not a lookup) get twice the train rows.
_TRAIN_WEIGHTS = {"sort": 2, "reverse": 2, "copy": 2}

Example = tuple[str, str, str]  # (instruction, input, output)


def _add(rng: random.Random) -> Example:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    phrasing = rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}.",
                           "Calculate the sum of {a} and {b}."])
    return phrasing.format(a=a, b=b), "", str(a + b)


def _subtract(rng: random.Random) -> Example:
    b, difference = rng.randint(0, 9), rng.randint(0, 9)
    a = b + difference
    phrasing = rng.choice(["What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}.",
                           "What do you get when you take {b} away from {a}?"])
    return phrasing.format(a=a, b=b), "", str(a - b)


def _sort(rng: random.Random) -> Example:
    numbers = rng.sample(range(16), rng.randint(3, 4))
    instruction = rng.choice(["Sort these numbers from smallest to largest.", "Put the numbers in ascending order.",
                              "Arrange the following numbers in increasing order."])
    return instruction, ", ".join(map(str, numbers)), ", ".join(map(str, sorted(numbers)))


def _word_list(rng: random.Random) -> list[str]:
    return rng.sample(WORDS, rng.randint(3, 4))


def _reverse(rng: random.Random) -> Example:
    words = _word_list(rng)
    instruction = rng.choice(["Reverse the order of these words.", "Write the words in reverse order.",
                              "List these words backwards, last word first."])
    return instruction, " ".join(words), " ".join(reversed(words))


def _copy(rng: random.Random) -> Example:
    words = _word_list(rng)
    instruction = rng.choice(["Repeat the following words exactly.", "Copy the input.",
                              "Write the same words again."])
    return instruction, " ".join(words), " ".join(words)


def _count(rng: random.Random) -> Example:
    words = rng.sample(WORDS, rng.randint(2, 6))
    instruction = rng.choice(["How many items are in this list?", "Count the items in the list.",
                              "Tell me the number of words in the list."])
    return instruction, ", ".join(words), str(len(words))


def _capital(rng: random.Random) -> Example:
    country = rng.choice(sorted(CAPITALS))
    phrasing = rng.choice(["What is the capital of {c}?", "Name the capital city of {c}.",
                           "Which city is the capital of {c}?", "Tell me the capital of {c}.",
                           "{c} has which city as its capital?"])
    return phrasing.format(c=country), "", CAPITALS[country]


def _parity(rng: random.Random) -> Example:
    n = rng.randint(0, 49)
    phrasing = rng.choice(["Is {n} even or odd?", "Is the number {n} odd or even?",
                           "Tell me whether {n} is even or odd.", "Answer even or odd: {n}"])
    return phrasing.format(n=n), "", PARITY_CHOICES[n % 2]


FAMILIES: dict[str, Callable[[random.Random], Example]] = {
    "add": _add, "subtract": _subtract, "sort": _sort, "reverse": _reverse,
    "copy": _copy, "count": _count, "capital": _capital, "parity": _parity,
}


def alpaca_prompt(instruction: str, input_text: str) -> str:
    if input_text:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def _row(family: str, example: Example) -> dict:
    instruction, input_text, output = example
    row = {"family": family, "instruction": instruction, "input": input_text, "output": output,
           "prompt": alpaca_prompt(instruction, input_text)}
    if family == "parity":
        row["choices"] = list(PARITY_CHOICES)
    return row


def _draw(rng: random.Random, family: str, count: int, barred: set[str]) -> list[dict]:
    """``count`` rows of one family whose prompts are not in ``barred`` (updated, so draws stay distinct)."""
    rows = []
    for _ in range(200 * count):
        if len(rows) == count:
            return rows
        row = _row(family, FAMILIES[family](rng))
        if row["prompt"] not in barred:
            barred.add(row["prompt"])
            rows.append(row)
    raise RuntimeError(f"family {family!r} has too few distinct prompts for {count} held-out rows")


def _held_out(rng: random.Random, per_family: int, barred: set[str]) -> list[dict]:
    return [row for family in FAMILIES for row in _draw(rng, family, per_family, barred)]


def _train(rng: random.Random, size: int, held_out: set[str]) -> list[dict]:
    """Train rows may repeat each other (small families have few distinct prompts) but never a held-out prompt."""
    rows: list[dict] = []
    families = [family for family in FAMILIES for _ in range(_TRAIN_WEIGHTS.get(family, 1))]
    while len(rows) < size:
        family = families[len(rows) % len(families)]
        row = _row(family, FAMILIES[family](rng))
        if row["prompt"] not in held_out:
            rows.append(row)
    rng.shuffle(rows)
    return rows


def pretrain_text(row: dict) -> str:
    parts = [row["instruction"], row["input"], row["output"]]
    return "\n".join(part for part in parts if part)


def generate(seed: int = 0, train_size: int = 4000, held_out_per_family: int = 25,
             pretrain_size: int = 2000) -> dict[str, list[dict]]:
    """All splits; ``valid`` and ``test`` prompts are distinct from each other and absent from train/pretrain."""
    rng = random.Random(seed)
    barred: set[str] = set()
    test = _held_out(rng, held_out_per_family, barred)
    valid = _held_out(rng, held_out_per_family, barred)
    train = _train(rng, train_size, barred)
    pretrain = [{"text": pretrain_text(row)} for row in _train(rng, pretrain_size, barred)]
    return {"train": train, "valid": valid, "test": test, "pretrain": pretrain}


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_splits(folder: Path, splits: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(folder / f"{name}.jsonl", rows)
    counts = ", ".join(f"{name}: {len(rows)}" for name, rows in splits.items())
    (folder / "SOURCE.md").write_text(
        "# synth: generated instruction data for the built-in tiny models\n\n"
        f"Generated by `harness.tiny_data.generate` (no download). Rows: {counts}.\n"
        f"Families: {', '.join(FAMILIES)}; `parity` rows carry `choices` {PARITY_CHOICES}.\n"
        "Fields: `family`, `instruction`, `input`, `output`, `prompt` (Alpaca style, as in the MiniLLM files);\n"
        "`pretrain.jsonl` holds `{\"text\": ...}` lines from the same generator. Valid and test prompts never occur\n"
        "in train or pretrain.\n",
        encoding="utf-8",
    )
