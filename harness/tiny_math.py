"""The built-in tiny RLVR default: synthetic verifiable arithmetic with worked expert solutions, and a policy.

Each problem is two arithmetic steps ("Compute 12 + 7 - 5."); its expert solution writes one step per paragraph,
blank lines between them (the points where TRAPO's expert prefixes are cut), and ends with the answer in
``\\boxed{}``, so the math verifier scores it like the real math suite. The prompt is the math suite's
(problem, then the step-by-step instruction). Built once under ``<cache root>/tiny-math-v1/``, separately from
the distillation default (`harness.tiny`): its own byte-level BPE tokenizer and an untrained policy of the tiny
student's shape, which `harness train-and-eval trapo` first initialises by a short SFT.

Layout: ``policy/`` (HF folder) and ``data/math_synth/{train,valid,test}.jsonl`` with fields `problem`,
`solution`, `answer` (RL) and `prompt`, `output` (SFT).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from harness.tasks.math import cot_prompt
from harness.tiny import SEED, STUDENT, cached_build, make_model, train_tokenizer
from harness.tiny_data import write_jsonl

VERSION = "tiny-math-v1"  # bump whenever the data, the tokenizer or the policy change


@dataclass(frozen=True)
class TinyMathPaths:
    policy: Path  # untrained HF folder with the tokenizer
    data: Path  # folder holding math_synth/{train,valid,test}.jsonl


def _add_subtract(rng: random.Random) -> tuple[str, list[str], int]:
    a, b = rng.randint(2, 19), rng.randint(2, 19)
    c = rng.randint(1, a + b - 1)
    return f"Compute {a} + {b} - {c}.", [f"{a} + {b} = {a + b}.", f"{a + b} - {c} = {a + b - c}."], a + b - c


def _multiply_add(rng: random.Random) -> tuple[str, list[str], int]:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 19)
    return f"Compute {a} * {b} + {c}.", [f"{a} * {b} = {a * b}.", f"{a * b} + {c} = {a * b + c}."], a * b + c


def _subtract_twice(rng: random.Random) -> tuple[str, list[str], int]:
    a = rng.randint(20, 49)
    b, c = rng.randint(1, 9), rng.randint(1, 9)
    return f"Compute {a} - {b} - {c}.", [f"{a} - {b} = {a - b}.", f"{a - b} - {c} = {a - b - c}."], a - b - c


FAMILIES = (_add_subtract, _multiply_add, _subtract_twice)


def problem_row(rng: random.Random) -> dict:
    problem, steps, answer = rng.choice(FAMILIES)(rng)
    solution = "\n\n".join([*steps, f"The answer is \\boxed{{{answer}}}."])
    prompt = cot_prompt("problem")({"problem": problem})
    return {"problem": problem, "solution": solution, "answer": str(answer), "prompt": prompt, "output": solution}


def generate(seed: int = SEED, train_size: int = 3000, held_out: int = 64) -> dict[str, list[dict]]:
    """Train, valid and test splits; no held-out problem appears in training."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"valid": [], "test": []}
    seen: set[str] = set()
    for name in ("valid", "test"):
        while len(splits[name]) < held_out:
            row = problem_row(rng)
            if row["problem"] not in seen:
                seen.add(row["problem"])
                splits[name].append(row)
    train = []
    while len(train) < train_size:
        row = problem_row(rng)
        if row["problem"] not in seen:
            train.append(row)
    splits["train"] = train
    return splits


def _build_into(folder: Path) -> None:
    splits = generate()
    (folder / "data" / "math_synth").mkdir(parents=True)
    for name, rows in splits.items():
        write_jsonl(folder / "data" / "math_synth" / f"{name}.jsonl", rows)
    rows = splits["train"]
    tokenizer = train_tokenizer([row["prompt"] for row in rows] + [row["solution"] for row in rows])
    policy = make_model(STUDENT, tokenizer, seed=SEED + 2)
    policy.save_pretrained(folder / "policy")
    tokenizer.save_pretrained(folder / "policy")


def build(cache_root: Path | None = None, force: bool = False) -> TinyMathPaths:
    """Build the tiny math data and untrained policy once (seconds) under ``cache_root``."""
    folder = cached_build(VERSION, _build_into, cache_root, force)
    return TinyMathPaths(policy=folder / "policy", data=folder / "data")
