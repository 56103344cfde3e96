"""Math answer verification for RLVR benchmarks (GSM8K, MATH-500, AIME, AMC, Minerva, OlympiadBench).

Spec: eval-protocols section 4, math-verify as the reference. Two entry points:

- `verify_completions` (and `math_reward`, the RLVR reward) judges whole completions as math-verify's `parse` +
  `verify` (gold first) does: math-verify itself extracts the answer (boxed parts, an unboxed final answer in
  LaTeX, relations, intervals, percentages). A completion with exactly one `\\boxed{}` holding a plain number,
  tuple or set is settled in-process first (the same verdict, exact, microseconds). Only where math-verify finds no
  answer at all is the last number of the text taken, and the verdict is flagged `last_number`.
- `math_equal` decides equivalence of two extracted answers:
  1. normalise both strings (spacing commands, `\\left`, units, degrees, `$`, thousands commas) and settle plain
     numbers, tuples and sets of numbers in-process, exactly (decimals to 6 places);
  2. otherwise run math-verify on the raw pair.

Both run math-verify in a worker process with a hard timeout (`math_pool`), so no input can hang the caller, from
any thread or process; an input longer than `MAX_SYMBOLIC_CHARS` after normalisation never reaches sympy and is
unequal.

Deliberate differences from math-verify (docs/math.md lists them with examples): `\\fbox{}` counts as
`\\boxed{}`; Python-style powers (`2**10`,
`2^-1`) are read as powers, where math-verify's LaTeX parser keeps the prefix (`$2**3$` is 2 there) or a bare
string; in an extracted answer `1e10`, bare `pi`, `exp` are read as meant, and `//` is unparsable (unequal);
decimals equal to 6 places (and to 1e-6 relative, so that 1e-8 != 1e-9) are equal (math-verify says
1.0000001 != 1 because sympy >= 1.13 no longer equates Float and Integer), a decimal percentage matches its face
value (12.5% = 12.5, as 50% = 50 already does there), thousands written with thin spaces (`3\\,000`) are numbers,
and `x=3` vs `y=3` are equal.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.metrics.math_normalise import (
    UNPARSABLE,
    answer_as_latex,
    fast_equal,
    latex_operators,
    normalise,
    parse_number,
)
from harness.metrics.math_pool import get_pool

MAX_SYMBOLIC_CHARS = 1000
_BOX = re.compile(r"\\(?:boxed|fbox)")
_UNBRACED_BOX = re.compile(r"\s+([^\s$]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer(completion: str) -> tuple[str | None, str]:
    """The last `\\boxed{}` of a text, else its last number: ("...", "boxed"), ("...", "last_number") or
    (None, "none"). Reads gold solutions (Minerva); completions go through `verify_completions`."""
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
    number = _last_number(completion)
    return (number, "last_number") if number is not None else (None, "none")


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
        requests = [{"pairs": candidates} for candidates in slow_items]
        verdicts = get_pool(workers or default_workers()).run(requests, timeout)
        for i, verdict in zip(slow_index, verdicts, strict=True):
            results[i] = verdict is not None and verdict["equal"]
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
    if UNPARSABLE.search(norm_gold) or UNPARSABLE.search(norm_pred):
        return False, []  # math-verify would read a prefix of it, a different number
    # Only the raw pair goes to math-verify: on a normalised string its parser sometimes fails and then
    # compares the unparsed prefixes as strings, a false positive.
    return None, [(answer_as_latex(gold.strip()), answer_as_latex(prediction.strip()))]


@dataclass(frozen=True)
class Verdict:
    """A judged completion: whether it is right, the answer read from it, and how that answer was found:
    `boxed` (its one `\\boxed{}`, settled in-process), `math_verify` (math-verify's extraction), `last_number`
    (math-verify found nothing; the fallback), `none` (no answer at all) or `timeout` (counted wrong); under
    `VerifierOptions`, also `answer_phrase` (Qwen's "The answer is" fallback), `last_box` (TRAPO's second grader),
    `qwen_tolerance` (equal only within Qwen's number tolerance) and `no_think_end` (no `</think>`: wrong)."""

    correct: bool
    extracted: str | None
    method: str


@dataclass(frozen=True)
class VerifierOptions:
    """The papers' departures from our default reading, each off by default (the math presets switch them on).

    `after_think` (TRAPO's eval_scripts/generate_vllm.py): a response that opens with `<think>` is judged on the text
    after its first `</think>` only, and is wrong without one. `last_box_grader` (TRAPO's second grader, OAT's
    `boxed_reward_fn`): a response math-verify calls wrong is right when its last `\\boxed{}` equals the gold (our
    `math_equal` stands in for OAT's normaliser). `answer_phrases` (Qwen2.5-Math parser.py): where math-verify reads
    no answer, the text after the last "he answer is" or "final answer is" is the answer before the last number is.
    `qwen_tolerance` (Qwen2.5-Math grader.py, `math_equal` with include_percentage and is_close): numbers equal to a
    relative 1e-4, the gold also read as gold / 100 and gold x 100, a trailing % as / 100."""

    after_think: bool = False
    last_box_grader: bool = False
    answer_phrases: bool = False
    qwen_tolerance: bool = False


DEFAULT_VERIFIER = VerifierOptions()
THINK_START, THINK_END = "<think>", "</think>"
_ANSWER_PHRASES = ("he answer is", "final answer is")  # Qwen's order: "The answer is" first


def verify_completions(pairs: Sequence[tuple[str, str]], timeout: float = 5.0, workers: int | None = None,
                       options: VerifierOptions = DEFAULT_VERIFIER) -> list[Verdict]:
    """Judge (gold, whole completion) pairs as math-verify's parse + verify does; fast exact paths in-process.
    `options` switch on the papers' own readings (see `VerifierOptions`)."""
    if timeout <= 0:
        raise HarnessError(f"verifier timeout must be positive seconds, got {timeout}")
    judged = [(str(gold), _judged_text(str(text), options)) for gold, text in pairs]
    open_ = [i for i, (_, text) in enumerate(judged) if text is not None]
    found = _math_verify_verdicts([judged[i] for i in open_], timeout, workers, options)  # type: ignore[misc]
    verdicts = [Verdict(False, None, "no_think_end")] * len(judged)
    for i, verdict in zip(open_, found, strict=True):
        verdicts[i] = verdict
    if options.last_box_grader:
        verdicts = _last_box_regrade(judged, verdicts, timeout, workers)
    if options.qwen_tolerance:
        verdicts = [_with_tolerance(gold, verdict) for (gold, _), verdict in zip(judged, verdicts)]
    return verdicts


def _judged_text(completion: str, options: VerifierOptions) -> str | None:
    """The part of a completion that is judged; None for a think response that never closes its thinking."""
    if not options.after_think or not completion.lstrip().startswith(THINK_START):
        return completion
    parts = completion.split(THINK_END)
    return parts[1] if len(parts) > 1 else None  # TRAPO keeps split("</think>")[1]


def _math_verify_verdicts(pairs: Sequence[tuple[str, str]], timeout: float, workers: int | None,
                          options: VerifierOptions) -> list[Verdict]:
    verdicts: list[Verdict | None] = [_single_box_verdict(gold, text) for gold, text in pairs]
    slow = [i for i, verdict in enumerate(verdicts) if verdict is None]
    requests = [{"completion": [answer_as_latex(pairs[i][0].strip()), _as_math_verify_reads(pairs[i][1])]}
                for i in slow]
    answers = get_pool(workers or default_workers()).run(requests, timeout) if requests else []
    fallback: list[int] = []
    for i, answer in zip(slow, answers, strict=True):
        if answer is None:
            verdicts[i] = Verdict(False, None, "timeout")
        elif answer["extracted"] is None:
            fallback.append(i)
        else:
            verdicts[i] = Verdict(answer["equal"], answer["extracted"], "math_verify")
    read = {i: _fallback_answer(pairs[i][1], options) for i in fallback}
    found = [i for i in fallback if read[i] is not None]
    equal = math_equal_many([(pairs[i][0], read[i][0]) for i in found], timeout, workers)  # type: ignore[index]
    for i, same in zip(found, equal, strict=True):
        verdicts[i] = Verdict(same, *read[i])  # type: ignore[misc]
    return [verdict or Verdict(False, None, "none") for verdict in verdicts]


def _fallback_answer(text: str, options: VerifierOptions) -> tuple[str, str] | None:
    """(answer, method) where math-verify read none: Qwen's answer phrases when asked, then the last number."""
    if options.answer_phrases:
        for phrase in _ANSWER_PHRASES:
            if phrase in text:
                answer = re.sub(r"\n\s*", "", text.split(phrase)[-1].strip()).lstrip(":").rstrip("./")
                return (answer, "answer_phrase") if answer else None
    number = _last_number(text)
    return (number, "last_number") if number is not None else None


def _last_box_regrade(judged: list[tuple[str, str | None]], verdicts: list[Verdict], timeout: float,
                      workers: int | None) -> list[Verdict]:
    """TRAPO's second grader: a wrong verdict is overturned when the last box equals the gold."""
    boxes = {i: extract_answer(text) for i, (_, text) in enumerate(judged)
             if text is not None and not verdicts[i].correct}
    regrade = [i for i, (answer, method) in boxes.items() if method == "boxed" and answer]
    equal = math_equal_many([(judged[i][0], boxes[i][0]) for i in regrade], timeout, workers)  # type: ignore[misc]
    regraded = list(verdicts)
    for i, same in zip(regrade, equal, strict=True):
        if same:
            regraded[i] = Verdict(True, boxes[i][0], "last_box")
    return regraded


def _with_tolerance(gold: str, verdict: Verdict) -> Verdict:
    if verdict.correct or verdict.extracted is None or not qwen_numbers_close(gold, verdict.extracted):
        return verdict
    return Verdict(True, verdict.extracted, "qwen_tolerance")


def qwen_numbers_close(gold: str, prediction: str) -> bool:
    """Qwen2.5-Math's `is_numerical_equal(prediction, reference, include_percentage=True, is_close=True)`: both
    plain numbers (a trailing % read as / 100) and `math.isclose(gold', prediction, rel_tol=1e-4)` for gold' in
    (gold / 100, gold, gold x 100)."""
    g, p = parse_number(normalise(gold)), parse_number(normalise(prediction))
    if g is None or p is None:
        return False
    value = float(p.value / 100 if p.percent else p.value)
    reference = float(g.value / 100 if g.percent else g.value)
    return any(math.isclose(reference * scale, value, rel_tol=1e-4) for scale in (0.01, 1.0, 100.0))


def _as_math_verify_reads(completion: str) -> str:
    """The completion with Python-style powers in LaTeX and `\\fbox` as `\\boxed` (math-verify knows only the
    latter; MATH's solutions use both)."""
    return latex_operators(completion).replace("\\fbox{", "\\boxed{")


def _single_box_verdict(gold: str, completion: str) -> Verdict | None:
    """The verdict when the completion has one `\\boxed{}` of plain numbers (math-verify reads that box and
    nothing else), decided exactly in-process; None when math-verify must read the completion."""
    boxes = list(_BOX.finditer(completion))
    if len(boxes) != 1:
        return None
    answer, method = extract_answer(completion)
    if method != "boxed" or answer is None:
        return None
    norm_gold, norm_answer = normalise(gold), normalise(answer)
    decided = fast_equal(norm_gold, norm_answer) if norm_gold and norm_answer else None
    return None if decided is None else Verdict(decided, answer, "boxed")


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].rstrip(",") if numbers else None


def math_reward(gold: str, completion: str, timeout: float = 5.0) -> float:
    """1.0 when the full `completion` answers `gold` (as `verify_completions` judges it), else 0.0 (the RLVR
    reward; the math suite scores with the same function)."""
    return float(verify_completions([(gold, completion)], timeout=timeout)[0].correct)


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
