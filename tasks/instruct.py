"""The MiniLLM instruction-following suite: Dolly, SelfInst, Vicuna, S-NI and UnNI (suite `instruct`).

Protocol (MiniLLM, Gu et al. 2024, section 4 and its released evaluation code): the released Alpaca-style `prompt`
field, in which `<n>` stands for a newline; the prompt truncated to its first 256 tokens (data_utils/
prompt_datasets.py keeps `data[:max_prompt_length]`); sampling at temperature 1 with top-p 1 and top-k off, at most
256 new tokens, `no_repeat_ngram_size=6`; seeds 10, 20, 30, 40, 50, reported as the mean and the population
standard deviation of the five per-seed means. Each prediction is cut at a literal `<|endoftext|>` and its `<n>`
become newlines before scoring, as the reference does. Scores: ROUGE-L F (rouge_score's rougeL with the Porter
stemmer, max over references) and exact match, both x100; mean generated length; the teacher-forced loss of the
reference. Every sample of a document draws from its own seed, derived from the run seed and the document
(`harness.runner.request_seed`), so samples are independent across prompts.
Data: the MiniLLM evaluation files (`shared/data`), or the same files in the MiniLLM hub repos.
Difference from the reference code: none intended.

Analyses (MiniLLM section on diversity and long texts): every task also reports Dist-4 (x100) per seed over that
seed's responses, then the mean over seeds (`dist4`, with `dist4_std`; the paper's per-seed tables), and, pooled over
every response of every seed, `dist4_pooled` with its counts `dist4_distinct` / `dist4_total`. S-NI and UnNI also
report ROUGE-L per bucket of reference length, [0,5], [6,10] and [11,inf) (`rougeL_len_0_5`, ... with the document
counts `num_len_0_5`, ...). Reference length counts the tokens of the first reference in the tokenizer named by
`--length-tokenizer PATH` (the paper counts GPT-2 tokens: pass a GPT-2 tokenizer folder), else whitespace-separated
words; results.json names the unit used (`length_unit`, `length_tokenizer`). Words are fewer than GPT-2 tokens, so
short buckets then hold a little more than the paper's. The buckets are comparable to the paper's only on its own
splits: the local `sinst` file is MiniLLM's `sinst/11_` split (references of at least 11 GPT-2 tokens), so it fills
only the last bucket with GPT-2 tokens; the local `uinst` file is a short-reference subset (every reference is at
most 5 words), not the 10,000-instance split behind the paper's UnNI column. The difference against a baseline
checkpoint is drawn in the report (`harness.reports.analysis_plots.register_length_baseline`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from harness.backends.base import SamplingSettings
from harness.errors import HarnessError
from harness.metrics.text import distinct_n, exact_match, rouge_l
from harness.registry import register_task
from harness.task import DataSource, Doc, Metric, Task, sample_mean, seed_mean

MINILLM_SAMPLING = SamplingSettings(
    max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0, no_repeat_ngram_size=6, max_prompt_tokens=256,
    truncation_side="right",
)
END_OF_TEXT = "<|endoftext|>"
MINILLM_SEEDS = (10, 20, 30, 40, 50)
LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = ((0, 5), (6, 10), (11, None))  # inclusive; None: no end


def released_prompt(doc: Doc) -> str:
    return doc["prompt"].replace("<n>", "\n")


def released_postprocess(prediction: str) -> str:
    """The prediction as the reference scores it: up to a literal end-of-text marker, `<n>` as a newline."""
    return prediction.split(END_OF_TEXT, 1)[0].replace("<n>", "\n").strip()


def reference_list(doc: Doc) -> list[str]:
    output = doc["output"]
    references = [output] if isinstance(output, str) else list(output)
    if not references or not all(isinstance(reference, str) for reference in references):
        raise ValueError("`output` must be a string or a non-empty list of strings")
    return references


def score_response(doc: Doc, prediction: str) -> dict[str, float]:
    references = reference_list(doc)
    return {"rougeL": rouge_l(prediction, references), "exact_match": exact_match(prediction, references)}


def distinct_4(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Dist-4 of each seed's responses, then the mean and population spread over seeds (a seed without any
    4-gram has no Dist-4); pooled over every response of every seed as `dist4_pooled`, with its counts."""
    seeds = len(samples[0]["predictions"]) if samples else 0
    per_seed = [distinct_n([sample["predictions"][seed] for sample in samples], 4) for seed in range(seeds)]
    values = [100.0 * distinct / total for distinct, total in per_seed if total]
    distinct, total = distinct_n([p for sample in samples for p in sample["predictions"]], 4)
    found = {"dist4_distinct": float(distinct), "dist4_total": float(total)}
    if total:
        found["dist4_pooled"] = 100.0 * distinct / total
    if values:
        found.update(dist4=statistics.fmean(values), dist4_std=statistics.pstdev(values))
    return found


Length = Callable[[str], int]  # a reference's length in the bucket unit


def word_count(text: str) -> int:
    return len(text.split())


def rouge_by_reference_length(buckets: tuple[tuple[int, int | None], ...], length: Length = word_count) -> Metric:
    """ROUGE-L (seed mean, x100) over the documents whose first reference's `length` falls in each bucket."""

    def metric(samples: list[dict[str, Any]]) -> dict[str, float]:
        found: dict[str, float] = {}
        lengths = [length(sample["references"][0]) for sample in samples]
        for low, high in buckets:
            key = f"len_{low}_{'inf' if high is None else high}"
            upper = math.inf if high is None else high
            inside = [s for s, n in zip(samples, lengths) if low <= n <= upper]
            found[f"num_{key}"] = float(len(inside))
            if inside:  # an empty bucket has no score, rather than a made-up 0
                found[f"rougeL_{key}"] = seed_mean("rougeL")(inside)["rougeL"]
        return found

    return metric


def token_count(tokenizer_path: str) -> Length:
    """Reference length in the tokens of a local tokenizer (special tokens not counted)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except (OSError, ValueError) as error:
        raise HarnessError(f"--length-tokenizer {tokenizer_path} holds no tokenizer that loads "
                           f"({str(error).splitlines()[0]}): pass a "
                           "tokenizer folder such as a GPT-2 checkpoint's") from None
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def instruction_task(name: str, local_file: str, hub_id: str, hub_files: str, description: str,
                     data_builtin=None, length_buckets: tuple[tuple[int, int | None], ...] = (),
                     length_tokenizer: str | None = None) -> Task:
    """One MiniLLM-protocol task; the five sets differ only in their data (and S-NI/UnNI in length buckets, whose
    reference lengths count `length_tokenizer` tokens, else words)."""
    buckets, configure, record = (), None, {}
    if length_buckets:
        length = token_count(length_tokenizer) if length_tokenizer else word_count
        buckets = (rouge_by_reference_length(length_buckets, length),)
        record = {"length_unit": "tokens" if length_tokenizer else "words", "length_tokenizer": length_tokenizer,
                  "reference_split": description}

        def configure(config: Any) -> Task:
            return instruction_task(name, local_file, hub_id, hub_files, description, data_builtin, length_buckets,
                                    config.length_tokenizer)

    return Task(
        name=name,
        description=description,
        data=DataSource(local_file=local_file, hub_id=hub_id, hub_files=hub_files, builtin=data_builtin),
        prompt=released_prompt,
        references=reference_list,
        scorer=score_response,
        postprocess=released_postprocess,
        sampling=MINILLM_SAMPLING,
        seeds=MINILLM_SEEDS,
        metrics=(seed_mean("rougeL"), seed_mean("exact_match"), sample_mean("gen_length"),
                 sample_mean("reference_loss"), distinct_4, *buckets),
        main_metric="rougeL",
        reference_loss=True,
        configure=configure,
        record=record,
    )


@register_task("dolly", suites=("instruct",))
def dolly() -> Task:
    return instruction_task("dolly", "dolly/valid.jsonl", "MiniLLM/dolly", "valid.jsonl",
                            "Dolly test split, 500 instructions (MiniLLM)")


@register_task("self_inst", suites=("instruct",))
def self_inst() -> Task:
    return instruction_task("self_inst", "self_instruct/minillm/valid.jsonl", "MiniLLM/self-inst", "valid.jsonl",
                            "SelfInst user-oriented instructions, 242 (MiniLLM)")


@register_task("vicuna", suites=("instruct",))
def vicuna() -> Task:
    return instruction_task("vicuna", "vicuna/minillm/valid.jsonl", "MiniLLM/Vicuna", "valid.jsonl",
                            "Vicuna questions, 80 (MiniLLM)")


@register_task("sni", suites=("instruct",))
def sni() -> Task:
    return instruction_task("sni", "sinst/valid.jsonl", "MiniLLM/sinst", "11_/valid.jsonl",
                            "Super-NaturalInstructions test instances, 1,694: MiniLLM's sinst/11_ split (references "
                            "of >= 11 GPT-2 tokens)",
                            length_buckets=LENGTH_BUCKETS)


@register_task("unni", suites=("instruct",))
def unni() -> Task:
    return instruction_task("unni", "uinst/valid.jsonl", "MiniLLM/uinst", "11_/valid.jsonl",
                            "Unnatural Instructions; the local file is a 1,050-instance short-reference subset (every "
                            "reference <= 5 words), not the split of MiniLLM's UnNI column (the hub's uinst/11_)",
                            length_buckets=LENGTH_BUCKETS)
