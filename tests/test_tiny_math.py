"""The tiny RLVR data: every expert solution is right by the math verifier, held-out problems never train."""

from __future__ import annotations

from harness.metrics.math import math_reward
from harness.tiny_math import generate


def test_expert_solutions_verify_and_held_out_problems_stay_out_of_training():
    splits = generate(train_size=300, held_out=32)
    train = {row["problem"] for row in splits["train"]}
    assert not train & {row["problem"] for row in splits["valid"] + splits["test"]}
    for row in splits["train"][:100] + splits["test"]:
        assert math_reward(row["answer"], row["solution"]) == 1.0, row
        assert row["solution"].count("\n\n") == 2 and row["prompt"].startswith(row["problem"])
    assert {row["problem"].split()[2] for row in splits["train"]} == {"+", "*", "-"}  # all three families
