"""Math answer verification for RLVR benchmarks (GSM8K, MATH-500, AIME, AMC, Minerva, OlympiadBench).

Spec: eval-protocols section 4. `extract_answer` takes the last balanced `\\boxed{}`/`\\fbox{}` (else the last
number); `math_equal` decides equivalence with `math-verify` as the reference, in three stages:

1. normalise both strings (spacing commands, `\\left`, units, degrees, `$`, thousands commas) and settle plain
   numbers, tuples and sets of numbers in-process, exactly (decimals to 6 places);
2. otherwise run math-verify on the raw pair in a worker process with a hard timeout
   (`math_pool`), so no input can hang the caller, from any thread or process;
3. an input longer than `MAX_SYMBOLIC_CHARS` after normalisation never reaches sympy and is unequal.

Deliberate differences from math-verify: decimals equal to 6 places (and to 1e-6 relative, so that 1e-8 != 1e-9)
are equal (math-verify says 1.0000001 != 1 because sympy >= 1.13 no longer equates Float and Integer), `4.5e33`
is scientific notation, a decimal percentage matches its face value (12.5% = 12.5, as 50% = 50 already does
there), thousands written with thin spaces (`3\\,000`) are numbers, and `x=3` vs `y=3` are equal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from harness.errors import HarnessError
from harness.metrics.math_normalise import fast_equal, normalise
from harness.metrics.math_pool import get_pool

MAX_SYMBOLIC_CHARS = 1000
_BOX = re.compile(r"\\(?:boxed|fbox)")
_UNBRACED_BOX = re.compile(r"\s+([^\s$]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer(completion: str) -> tuple[str | None, str]:
    """The final answer and how it was found: ("...", "boxed"), ("...", "last_number") or (None, "none")."""
    closing = _matching_braces(completion)
    for box in reversed(list(_BOX.finditer(completion))):
        start = box.end()
        if completion.startswith("{", start):
            end = closing.get(start)
            if end is not None:
                return completion[start + 1:end].strip(), "boxed"
            continue
        bare = _UNBRACED_BOX.match(completion, start)
        if bare:
            return bare.group(1).rstrip(".,"), "boxed"
    numbers = _NUMBER.findall(completion)
    if numbers:
        return numbers[-1].rstrip(","), "last_number"
    return None, "none"


def _matching_braces(text: str) -> dict[int, int]:
    """Map each `{` position to its closing `}` in one pass; escaped `\\{`, `\\}` are literal braces."""
    pairs, stack = {}, []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def gsm8k_gold(answer_field: str) -> str:
    """GSM8K's gold number: the text after `####`, without thousands commas."""
    if "####" not in answer_field:
        raise HarnessError("GSM8K answer has no '####' line; pass the dataset's `answer` field")
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def math_equal(gold: str, prediction: str, timeout: float = 5.0) -> bool:
    """True when `prediction` (an extracted answer) equals `gold`; False when it overruns `timeout` s."""
    return math_equal_many([(gold, prediction)], timeout=timeout)[0]


def math_equal_many(
    pairs: Sequence[tuple[str, str]], timeout: float = 5.0, workers: int | None = None
) -> list[bool]:
    """`math_equal` over (gold, prediction) pairs: fast paths in-process, the rest in parallel workers."""
    if timeout <= 0:
        raise HarnessError(f"verifier timeout must be positive seconds, got {timeout}")
    results: list[bool] = [False] * len(pairs)
    slow_items: list[list[tuple[str, str]]] = []
    slow_index: list[int] = []
    for i, (gold, prediction) in enumerate(pairs):
        decided, candidates = _triage(str(gold), str(prediction))
        if decided is not None:
            results[i] = decided
        else:
            slow_items.append(candidates)
            slow_index.append(i)
    if slow_items:
        verdicts = get_pool(workers or default_workers()).run(slow_items, timeout)
        for i, verdict in zip(slow_index, verdicts, strict=True):
            results[i] = verdict
    return results


def _triage(gold: str, prediction: str) -> tuple[bool | None, list[tuple[str, str]]]:
    """A final verdict from the fast path, or the candidate pairs for math-verify."""
    norm_gold, norm_pred = normalise(gold), normalise(prediction)
    if not norm_pred or not norm_gold:
        return False, []
    decided = fast_equal(norm_gold, norm_pred)
    if decided is not None:
        return decided, []
    if len(norm_gold) > MAX_SYMBOLIC_CHARS or len(norm_pred) > MAX_SYMBOLIC_CHARS:
        return False, []
    # Only the raw pair goes to math-verify: on a normalised string its parser sometimes fails and then
    # compares the unparsed prefixes as strings, a false positive.
    return None, [(gold.strip(), prediction.strip())]


def math_reward(gold: str, completion: str, timeout: float = 5.0) -> float:
    """1.0 when the answer extracted from the full `completion` equals `gold`, else 0.0 (the RLVR reward)."""
    answer, _ = extract_answer(completion)
    if answer is None:
        return 0.0
    return float(math_equal(gold, answer, timeout=timeout))


def majority_answer(answers: Sequence[str | None], timeout: float = 5.0) -> str | None:
    """The most common answer, equivalent answers counted as one; ties go to the earliest; None if none."""
    groups: list[tuple[str, int]] = []  # (representative, votes)
    for answer in answers:
        if answer is None:
            continue
        for g, (representative, votes) in enumerate(groups):
            if math_equal(representative, answer, timeout=timeout):
                groups[g] = (representative, votes + 1)
                break
        else:
            groups.append((answer, 1))
    if not groups:
        return None
    return max(groups, key=lambda group: group[1])[0]


def majority_vote(answers: Sequence[str | None], gold: str, timeout: float = 5.0) -> bool:
    """maj@k: whether the majority answer among `answers` equals `gold`."""
    answer = majority_answer(answers, timeout=timeout)
    return answer is not None and math_equal(gold, answer, timeout=timeout)
