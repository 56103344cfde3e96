"""The math reasoning suite of RLVR papers (suite `math`): GSM8K, MATH-500, AIME 2024/2025, AMC 2023, Minerva Math
and OlympiadBench, scored by the final answer; also AMC-83 and Gaokao 2023 (English), and TRAPO's five-set suite
`trapo5`.

Protocol `default` (the other named protocols, `--protocol trapo|qwen25-math-cot|simplerl`, are in
`harness.tasks.math_protocols`; `trapo5` runs under `trapo`), from eval-protocols section 4, as in the Qwen2.5-Math
evaluation and the RLVR papers that reuse it: the problem, then "Please reason step by step, and put your final
answer within \\boxed{}." as the plain prompt, or the same text as one user turn of the model's chat template
(`--chat-template`). Each completion is judged against the gold as math-verify's parse + verify reads it
(`verify_completions`, the function behind the RLVR `math_reward` too: a single boxed number exactly in-process,
else math-verify in killable workers); only where math-verify finds no answer is the last number taken, counted as a
fallback (`fallback_rate`; per prediction `method` in samples.jsonl).

Sampling: AIME 2024, AIME 2025 and AMC 2023 draw 32 samples at temperature 0.6, top-p 0.95 (avg@32); the others
decode greedily once (the Qwen2.5-Math style). All allow 2,048 new tokens; reasoning models need
`--gen-kwargs max_new_tokens=32768`. `--samples k` with a sampling temperature gives avg@k on any set.
Metrics (x100): `avg@k` (mean correctness over the k samples, equal to the unbiased `pass@1`), `pass@k` for
k = 1, 2, 4, ... and k itself (Chen et al. 2021 estimator), `maj@k` (majority vote, equivalent answers pooled);
`fallback_rate` in percent, `num_samples` k, mean `gen_length` in tokens.

Data (`shared/data/<set>/test.jsonl`, else the hub): GSM8K test (openai/gsm8k, gold after `####`); MATH-500
(HuggingFaceH4/MATH-500); AIME 2024 (HuggingFaceH4/aime_2024); AIME 2025 (math-ai/aime25); AMC 2023, the 40
problems of AMC 12A/12B 2023 (math-ai/amc23), not the 83-problem AMC set (AI-MO/aimo-validation-amc) behind
TRAPO's "AMC" column; Minerva Math, 272 OCW problems (locally the gold is the last `\\boxed{}` of `solution`, on
the hub math-ai/minervamath the `answer` column); OlympiadBench, English text-only open-ended maths, 675 problems
(Hothan/OlympiadBench, OE_TO_maths_en_COMP; gold `final_answer`); AMC-83, AMC 12 2022-2023 as TRAPO's
`data/valid.amc.parquet` holds it (one row per problem of its 32 copies; AI-MO/aimo-validation-amc on the hub);
Gaokao 2023 English, 385 problems from Qwen2.5-Math's `evaluation/data` (gold `answer` without `$`).
Differences from the Qwen2.5-Math code: one prompt for every set (it has per-set few-shot and chat prompts), and
its own answer normaliser is replaced by math-verify (see `harness.metrics.math`). OlympiadBench's unit is not
appended to the gold, as in Qwen's `parse_ground_truth` (which keeps only `final_answer[0]`; we join them all).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from harness.backends.base import SamplingSettings
from harness.metrics.math import Verdict, extract_answer, gsm8k_gold, math_equal_many, verify_completions
from harness.metrics.passk import pass_at_k
from harness.metrics.stats import with_uncertainty
from harness.registry import register_suite, register_task
from harness.task import DataSource, Doc, Task, sample_mean
from harness.tasks.math_protocols import DEFAULT, PROTOCOLS, Protocol, think_prefix

FALLBACKS = ("last_number", "answer_phrase")  # answers math-verify did not read
VERIFY_TIMEOUT = 5.0  # seconds per answer; math-verify can hang on inputs like nested powers

Record = dict[str, Any]  # one document's record in samples.jsonl


# ----- gold answers ----------------------------------------------------------------------------------------------


def answer_field(doc: Doc) -> str:
    """The `answer` field as text; AMC stores numbers as floats (27.0), shown here as 27."""
    answer = doc["answer"]
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer)


def gsm8k_answer(doc: Doc) -> str:
    return gsm8k_gold(doc["answer"])


def minerva_answer(doc: Doc) -> str:
    if "answer" in doc:  # the hub copy has the answer as a column
        return answer_field(doc)
    answer, method = extract_answer(doc["solution"])
    if method != "boxed":
        raise ValueError("the `solution` field has no \\boxed{} answer")
    return answer


def trapo_answer(doc: Doc) -> str:
    """TRAPO's files store whole numbers as floats ("142.0"); shown as 142 (the verdict is the same)."""
    answer = answer_field(doc)
    return answer[:-2] if re.fullmatch(r"-?\d+\.0", answer) else answer


def gaokao_answer(doc: Doc) -> str:
    """Qwen2.5-Math's gold for gaokao2023en: the `answer` field without its `$`."""
    return doc["answer"].replace("$", "").strip()


def olympiad_answer(doc: Doc) -> str:
    return ", ".join(doc["final_answer"])


# ----- prompt and scoring ----------------------------------------------------------------------------------------


def cot_prompt(field: str) -> Callable[[Doc], str]:
    """The default protocol's prompt of a document's `field` (the RLVR trainers train on it)."""
    return lambda doc: DEFAULT.prompt(doc[field].strip())


def scores(verdict: Verdict) -> dict[str, float]:
    return {"correct": float(verdict.correct), "fallback": float(verdict.method in FALLBACKS)}


def verify(golds: list[str], completions: list[str], timeout: float = VERIFY_TIMEOUT) -> list[dict[str, float]]:
    """Correctness and fallback flag of each completion, judged in one parallel call: the suite's scores and the
    RLVR reward (`correct` is `math_reward` of each completion)."""
    return [scores(verdict) for verdict in verify_completions(list(zip(golds, completions)), timeout=timeout)]


# ----- metrics: per-document records -> numbers ------------------------------------------------------------------


def correct_counts(samples: list[Record]) -> list[tuple[int, int]]:
    """(samples drawn, samples correct) per document."""
    return [(len(s["scores"]["correct"]), int(sum(s["scores"]["correct"]))) for s in samples]


def pass_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else [*ks, n]


def avg_and_pass_at_k(samples: list[Record]) -> dict[str, Any]:
    counts = correct_counts(samples)
    n = min(drawn for drawn, _ in counts)  # every document gets the same seeds, so this is every document's n
    found = {**with_uncertainty(f"avg@{n}", [c / drawn for drawn, c in counts], 100.0), "num_samples": float(n)}
    for k in pass_ks(n):
        found.update(with_uncertainty(f"pass@{k}", [pass_at_k(drawn, c, k) for drawn, c in counts], 100.0))
    return found


def majority_correct(samples: list[Record]) -> list[bool]:
    """Per document, whether its most common answer is right. As `harness.metrics.math.majority_answer`: equivalent
    answers vote together, a group is represented by its first answer, ties go to the earliest group and missing
    or empty answers do not vote. Identical strings always share a group, and the equivalence of every pair of
    distinct answers is decided up front in one parallel call."""
    distinct = [list(dict.fromkeys(voting_answers(sample))) for sample in samples]
    pairs = [(doc, i, j) for doc, answers in enumerate(distinct) for j in range(len(answers)) for i in range(j)]
    verdicts = math_equal_many([(distinct[d][i], distinct[d][j]) for d, i, j in pairs], timeout=VERIFY_TIMEOUT)
    equal = {pair for pair, same in zip(pairs, verdicts, strict=True) if same}
    return [_majority_is_correct(sample, answers, lambda i, j, doc=doc: (doc, i, j) in equal)
            for doc, (sample, answers) in enumerate(zip(samples, distinct))]


def voting_answers(sample: Record) -> list[str]:
    return [answer for answer in sample["annotations"]["extracted"] if answer and answer.strip()]


def _majority_is_correct(sample: Record, distinct: list[str], equal: Callable[[int, int], bool]) -> bool:
    representatives: list[int] = []  # indices into `distinct`, in the order the groups were opened
    group_of: dict[str, int] = {}
    for j, answer in enumerate(distinct):
        group = next((i for i in representatives if equal(i, j)), None)
        if group is None:
            representatives.append(j)
            group = j
        group_of[answer] = group
    votes = Counter(group_of[answer] for answer in voting_answers(sample))
    if not votes:
        return False
    winner = max(representatives, key=votes.__getitem__)  # max keeps the first of equals: the earliest group
    first = sample["annotations"]["extracted"].index(distinct[winner])
    return bool(sample["scores"]["correct"][first])


def fallback_rate(samples: list[Record]) -> dict[str, Any]:
    """Percent of predictions whose answer is the last number (math-verify read none)."""
    found = sample_mean("fallback", 100.0)(samples)
    return {key.replace("fallback", "fallback_rate", 1): value for key, value in found.items()}


def majority_at_k(samples: list[Record]) -> dict[str, Any]:
    n = min(drawn for drawn, _ in correct_counts(samples))
    return with_uncertainty(f"maj@{n}", [float(right) for right in majority_correct(samples)], 100.0)


# ----- tasks -----------------------------------------------------------------------------------------------------


def math_task(name: str, description: str, data: DataSource, problem_field: str, gold: Callable[[Doc], str],
              sampled: bool, sampling: SamplingSettings | None = None, seeds: tuple[int, ...] | None = None,
              protocol: Protocol = DEFAULT) -> Task:
    """One benchmark of the suite; they differ in data, gold field and whether they are sampled repeatedly (AIME,
    AMC). `protocol` sets prompt, decoding and verifier together (`harness.tasks.math_protocols`); `sampling` and
    `seeds` replace its decoding (the tiny `math_synth`)."""
    judged: dict[tuple[str, str], Verdict] = {}  # score_many's verdicts, read back for samples.jsonl
    verifier = protocol.verifier

    def score_many(pairs: list[tuple[Doc, str]]) -> list[dict[str, float]]:
        keys = [(gold(doc), prediction) for doc, prediction in pairs]
        verdicts = verify_completions(keys, timeout=VERIFY_TIMEOUT, options=verifier)  # all in one parallel call
        judged.update(zip(keys, verdicts))
        return [scores(verdict) for verdict in verdicts]

    def annotate(doc: Doc, prediction: str) -> dict[str, Any]:
        key = (gold(doc), prediction)
        verdict = judged.get(key) or verify_completions([key], timeout=VERIFY_TIMEOUT, options=verifier)[0]
        return {"extracted": verdict.extracted, "method": verdict.method}

    def under(config: Any) -> Task:
        chosen = PROTOCOLS[config.protocol] if config.protocol else protocol
        return math_task(name, description, data, problem_field, gold, sampled, sampling, seeds, chosen)

    messages = protocol.messages
    return Task(
        name=name,
        description=description,
        data=data,
        prompt=lambda doc: protocol.prompt(doc[problem_field].strip()),
        references=lambda doc: [gold(doc)],
        scorer=lambda doc, prediction: score_many([(doc, prediction)])[0],
        score_many=score_many,
        annotate=annotate,
        sampling=sampling or (protocol.repeated if sampled else protocol.single),
        seeds=seeds or (tuple(range(protocol.repeats)) if sampled else (0,)),
        metrics=(avg_and_pass_at_k, majority_at_k, fallback_rate, sample_mean("gen_length")),
        main_metric="pass@1",
        configure=under,
        protocols=tuple(PROTOCOLS),
        messages=(lambda doc: messages(doc[problem_field].strip())) if messages else None,
        chat_template=protocol.chat_template,
        response_prefix=think_prefix if protocol.think_prefix else None,
        record={"protocol": protocol.name},
    )


@register_task("gsm8k", suites=("math",))
def gsm8k() -> Task:
    return math_task("gsm8k", "GSM8K test, 1,319 grade-school problems (greedy)",
                     DataSource("gsm8k/test.jsonl", hub_id="openai/gsm8k", hub_config="main"),
                     "question", gsm8k_answer, sampled=False)


@register_task("math500", suites=("math", "trapo5"))
def math500() -> Task:
    return math_task("math500", "MATH-500, the PRM800K test subset of MATH (greedy)",
                     DataSource("math500/test.jsonl", hub_id="HuggingFaceH4/MATH-500"),
                     "problem", answer_field, sampled=False)


@register_task("aime24", suites=("math", "trapo5"))
def aime24() -> Task:
    return math_task("aime24", "AIME 2024 I and II, 30 problems (avg@32, T=0.6)",
                     DataSource("aime24/test.jsonl", hub_id="HuggingFaceH4/aime_2024", split="train"),
                     "problem", answer_field, sampled=True)


@register_task("aime25", suites=("math",))
def aime25() -> Task:
    return math_task("aime25", "AIME 2025 I and II, 30 problems (avg@32, T=0.6)",
                     DataSource("aime25/test.jsonl", hub_id="math-ai/aime25"),
                     "problem", answer_field, sampled=True)


@register_task("amc23", suites=("math",))
def amc23() -> Task:
    return math_task("amc23", "AMC 12 2023 (A and B), 40 problems; not the 83-problem AMC set (avg@32, T=0.6)",
                     DataSource("amc23/test.jsonl", hub_id="math-ai/amc23"),
                     "problem", answer_field, sampled=True)


@register_task("minerva_math", suites=("math", "trapo5"))
def minerva_math() -> Task:
    return math_task("minerva_math", "Minerva Math, 272 MIT OCW problems (greedy)",
                     DataSource("minerva_math/test.jsonl", hub_id="math-ai/minervamath",
                                fields={"problem": "question"}),
                     "problem", minerva_answer, sampled=False)


@register_task("olympiadbench", suites=("math", "trapo5"))
def olympiadbench() -> Task:
    return math_task("olympiadbench", "OlympiadBench, English text-only open-ended maths, 675 problems (greedy)",
                     DataSource("olympiadbench/test.jsonl", hub_id="Hothan/OlympiadBench",
                                hub_config="OE_TO_maths_en_COMP", split="train"),
                     "question", olympiad_answer, sampled=False)


@register_task("amc83", suites=("trapo5",))
def amc83() -> Task:
    return math_task("amc83", "AMC 12 2022-2023, the 83-problem AMC set of TRAPO's tables (avg@32, T=0.6)",
                     DataSource("amc83/test.jsonl", hub_id="AI-MO/aimo-validation-amc", split="train"),
                     "problem", trapo_answer, sampled=True)


@register_task("gaokao2023en")
def gaokao2023en() -> Task:
    return math_task("gaokao2023en", "Gaokao 2023 in English, 385 problems, CROPI's Qwen2.5-Math set (greedy)",
                     DataSource("gaokao2023en/test.jsonl"), "question", gaokao_answer, sampled=False)


register_suite("trapo5", "TRAPO's five-set average: AIME24, AMC-83, MATH-500, Minerva, OlympiadBench",
               protocol="trapo")


def tiny_math_data():
    from harness import tiny_math

    return tiny_math.build().data


@register_task("math_synth", suites=("math_synth",))
def math_synth() -> Task:
    """The built-in tiny RLVR set (`harness.tiny_math`): avg@8 and pass@k at the sampled sets' T=0.6, top-p 0.95."""
    return math_task("math_synth", "Synthetic two-step arithmetic of the built-in tiny RLVR default (avg@8, T=0.6)",
                     DataSource("math_synth/test.jsonl", builtin=tiny_math_data), "problem", answer_field,
                     sampled=True, sampling=DEFAULT.repeated.replace(max_new_tokens=48), seeds=tuple(range(8)))
