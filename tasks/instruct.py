"""The MiniLLM instruction-following suite: Dolly, SelfInst, Vicuna, S-NI and UnNI (suite `instruct`).

Protocol (MiniLLM, Gu et al. 2024, section 4 and its released evaluation code): the released Alpaca-style `prompt`
field, in which `<n>` stands for a newline; the prompt truncated to its last 256 tokens; sampling at temperature 1
with top-p 1 and top-k off, at most 256 new tokens, `no_repeat_ngram_size=6`; seeds 10, 20, 30, 40, 50, reported as
the mean and spread across seeds. Scores: ROUGE-L F (rouge_score's rougeL with the Porter stemmer, max over
references) and exact match, both x100; mean generated length; the teacher-forced loss of the reference.
Data: the MiniLLM evaluation files (`shared/data`), or the same files in the MiniLLM hub repos.
Difference from the reference code: none intended; the spread is the population std over the five seed means.
"""

from __future__ import annotations

from harness.backends.base import SamplingSettings
from harness.metrics.text import exact_match, rouge_l
from harness.registry import register_task
from harness.task import DataSource, Doc, Task, sample_mean, seed_mean

MINILLM_SAMPLING = SamplingSettings(
    max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0, no_repeat_ngram_size=6, max_prompt_tokens=256
)
MINILLM_SEEDS = (10, 20, 30, 40, 50)


def released_prompt(doc: Doc) -> str:
    return doc["prompt"].replace("<n>", "\n")


def reference_list(doc: Doc) -> list[str]:
    output = doc["output"]
    references = [output] if isinstance(output, str) else list(output)
    if not references or not all(isinstance(reference, str) for reference in references):
        raise ValueError("`output` must be a string or a non-empty list of strings")
    return references


def score_response(doc: Doc, prediction: str) -> dict[str, float]:
    references = reference_list(doc)
    return {"rougeL": rouge_l(prediction, references), "exact_match": exact_match(prediction, references)}


def instruction_task(name: str, local_file: str, hub_id: str, hub_files: str, description: str,
                     data_builtin=None) -> Task:
    """One MiniLLM-protocol task; the five sets differ only in their data."""
    return Task(
        name=name,
        description=description,
        data=DataSource(local_file=local_file, hub_id=hub_id, hub_files=hub_files, builtin=data_builtin),
        prompt=released_prompt,
        references=reference_list,
        scorer=score_response,
        sampling=MINILLM_SAMPLING,
        seeds=MINILLM_SEEDS,
        metrics=(seed_mean("rougeL"), seed_mean("exact_match"), sample_mean("gen_length"),
                 sample_mean("reference_loss")),
        main_metric="rougeL",
        reference_loss=True,
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
                            "Super-NaturalInstructions, reference length >= 11 tokens, 1,694 (MiniLLM)")


@register_task("unni", suites=("instruct",))
def unni() -> Task:
    return instruction_task("unni", "uinst/valid.jsonl", "MiniLLM/uinst", "11_/valid.jsonl",
                            "Unnatural Instructions, reference length >= 11 tokens (MiniLLM; 1,050 here)")
