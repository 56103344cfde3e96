"""PICL's classification in-context learning suite (`icl_cls`): SST-2, SUBJ, MR, RTE, AG News, CB, SST-5.

Protocol (PICL, Gu et al. 2023, section 4 and its released code, `data_utils/icl_*`): each set's promptsource
"Easy Prompt" template (the context ends in `Label:`, `Type:` or `Answer:`), whitespace runs collapsed to one space;
k = 4 demonstrations drawn label-balanced from the training split, shuffled, shared by every test document of a
seed; every demonstration is `context + " " + label word + "\\n"`; up to 1,000 label-balanced test documents;
seeds 10, 20, 30, 40, 50. Each option is scored by the summed log-prob of `" " + word + "\\n"` after the
demonstrations and the document's context, and the likeliest wins (PICL adds the newline token after every option).
Metrics: accuracy and macro-F1, x100, mean and spread over the seeds.
Data: the folders of shared/data (each SOURCE.md gives the format), or the hub ids below for users without them.

Differences from the released code, each a parameter of `icl_task`:
- `length_normalised` (default off, as PICL): divide each option's log-prob by its length in characters.
- Test subset: PICL shuffles the test split with HF `datasets` (seed 42) and keeps the first 1000 // #labels rows of
  each label, cut to the rarest label's count; we shuffle with Python's `random.Random(42)`, so the subset is drawn
  the same way but holds other rows.
- CB: PICL's code leaves "Maybe" out of the demonstration labels; the protocol (and we) keep all three.
- MR is the LM-BFF split (shared/data/mr/SOURCE.md), not HF `rotten_tomatoes`; its CSV quoting is stripped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from harness.data import read_label_lines
from harness.registry import register_task
from harness.task import ChoicePrediction, DataSource, Doc, FewShot, Task, seed_macro_f1, seed_mean

SEEDS = (10, 20, 30, 40, 50)
SHOTS = 4
TEST_SIZE = 1000
TEST_SEED = 42  # PICL's --seed-data


def collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


@dataclass(frozen=True)
class ICLSet:
    """One classification set: its template, label words in label order, and where its rows come from."""

    template: Callable[[Doc], str]  # the context, before whitespace is collapsed
    words: tuple[str, ...]
    label: Callable[[Doc], int]  # the label index of a row, from the local files or the hub
    test: DataSource
    pool: DataSource


def context(spec: ICLSet, doc: Doc) -> str:
    return collapse(spec.template(doc))


def demonstration(spec: ICLSet, row: Doc) -> str:
    return f"{context(spec, row)} {spec.words[spec.label(row)]}\n"


def balanced_test(rows: list[Doc], label: Callable[[Doc], int], size: int = TEST_SIZE) -> list[Doc]:
    """PICL's balanced evaluation set: shuffled, up to size // #labels rows per label, as many of each label as
    the rarest has, grouped by label."""
    shuffled = list(rows)
    random.Random(TEST_SEED).shuffle(shuffled)
    by_label: dict[int, list[Doc]] = {}
    for row in shuffled:
        by_label.setdefault(label(row), []).append(row)
    keep = min(min(len(group) for group in by_label.values()), size // len(by_label))
    return [row for value in sorted(by_label) for row in by_label[value][:keep]]


def score_option(doc: Doc, prediction: ChoicePrediction, *, spec: ICLSet, length_normalised: bool) -> dict[str, float]:
    logprobs = prediction.logprobs
    if length_normalised:
        logprobs = [lp / len(option) for lp, option in zip(logprobs, prediction.options)]
    chosen = max(range(len(logprobs)), key=logprobs.__getitem__)
    return {"acc": float(chosen == spec.label(doc))}


def icl_task(name: str, spec: ICLSet, description: str, length_normalised: bool = False) -> Task:
    options = [f" {word}\n" for word in spec.words]
    return Task(
        name=name,
        description=description,
        data=spec.test,
        prompt=partial(context, spec),
        references=lambda doc: [spec.words[spec.label(doc)]],
        scorer=partial(score_option, spec=spec, length_normalised=length_normalised),
        metrics=(seed_mean("acc"), seed_macro_f1()),
        main_metric="acc",
        seeds=SEEDS,
        choices=lambda doc: options,
        fewshot=FewShot(pool=spec.pool, k=SHOTS, demonstration=partial(demonstration, spec), label=spec.label),
        select=partial(balanced_test, label=spec.label),
    )


def _index(names: dict[Any, int]) -> Callable[[Doc], int]:
    """A label reader: the local files' label values through `names`, the hub's integer labels as they are."""
    valid = set(names.values())

    def label(doc: Doc) -> int:
        value = doc["label"]
        found = names.get(value, value)
        if found not in valid or isinstance(found, bool):
            raise ValueError(f"label {value!r} is not one of {sorted(map(str, names))}")
        return found

    return label


def _mr_sentence(doc: Doc) -> str:
    """The LM-BFF MR files keep the CSV quoting of some sentences (shared/data/mr/SOURCE.md)."""
    text = doc["sentence"]
    return text[1:-1].replace('""', '"') if len(text) > 1 and text[0] == text[-1] == '"' else text


def _agnews_text(doc: Doc) -> str:
    return doc["text"] if "text" in doc else f"{doc['Title']} {doc['Description']}"


def _agnews_label(doc: Doc) -> int:
    if "Class Index" in doc:  # test.csv: 1..4
        return _AGNEWS_LABEL({"label": int(doc["Class Index"]) - 1})
    return _AGNEWS_LABEL(doc)


_AGNEWS_LABEL = _index({"World": 0, "Sports": 1, "Business": 2, "Technology": 3})
_BINARY = _index({0: 0, 1: 1, "0": 0, "1": 1})
_RTE = _index({"entailment": 0, "not_entailment": 1})
_CB = _index({"entailment": 0, "contradiction": 1, "neutral": 2})
_SST5 = _index({i: i for i in range(5)})

# SST-2's labelled dev split (its test labels are hidden) and its train split, the demonstration pool; PPT reads
# the same files.
SST2_DEV = DataSource("sst2/stsa.binary.dev", reader=read_label_lines, hub_id="glue", hub_config="sst2",
                      split="validation")
SST2_TRAIN = DataSource("sst2/stsa.binary.train", reader=read_label_lines, hub_id="glue", hub_config="sst2",
                        split="train")

SETS: dict[str, tuple[ICLSet, str]] = {
    "sst2": (ICLSet(
        lambda d: f"Sentence: {d['sentence']}\nLabel:", ("Negative", "Positive"), _BINARY,
        SST2_DEV, SST2_TRAIN),
        "SST-2 dev (872), sentiment"),
    "subj": (ICLSet(
        lambda d: f"Input: {d['text']}\nType:", ("Objective", "Subjective"), _BINARY,
        DataSource("subj/test.jsonl", hub_id="SetFit/subj", split="test"),
        DataSource("subj/train.jsonl", more_files=("subj/val.jsonl",), hub_id="SetFit/subj", split="train")),
        "SUBJ test (2,000), subjectivity"),
    "mr": (ICLSet(
        lambda d: f"Sentence: {_mr_sentence(d)}\nLabel:", ("Negative", "Positive"), _BINARY,
        DataSource("mr/test.jsonl", hub_id="rotten_tomatoes", split="test", fields={"sentence": "text"}),
        DataSource("mr/train.jsonl", hub_id="rotten_tomatoes", split="train", fields={"sentence": "text"})),
        "MR test (LM-BFF split, 2,000), sentiment"),
    "rte": (ICLSet(
        lambda d: f"Passage: {d['premise']}\nQuestion: {d['hypothesis']} Yes or No?\nAnswer:", ("Yes", "No"), _RTE,
        DataSource("rte/val.jsonl", hub_id="super_glue", hub_config="rte", split="validation"),
        DataSource("rte/train.jsonl", hub_id="super_glue", hub_config="rte", split="train")),
        "RTE validation (277), entailment"),
    "agnews": (ICLSet(
        lambda d: f"Sentence: {_agnews_text(d)}\nLabel:",
        ("World politics", "Sports", "Business", "Science and technology"), _agnews_label,
        DataSource("agnews/test.csv", hub_id="ag_news", split="test"),
        DataSource("agnews/train_0.jsonl", more_files=tuple(f"agnews/train_{i}.jsonl" for i in range(1, 5)),
                   hub_id="ag_news", split="train")),
        "AG News test (7,600; 400-row demonstration pool), topic"),
    "cb": (ICLSet(
        lambda d: f"Passage: {d['premise']}\nQuestion: {d['hypothesis']}\nAnswer:", ("Yes", "No", "Maybe"), _CB,
        DataSource("cb/val.jsonl", hub_id="super_glue", hub_config="cb", split="validation"),
        DataSource("cb/train.jsonl", hub_id="super_glue", hub_config="cb", split="train")),
        "CB validation (56), three-way entailment"),
    "sst5": (ICLSet(
        lambda d: f"Sentence: {d['text']}\nLabel:", ("terrible", "bad", "neutral", "good", "great"), _SST5,
        DataSource("sst5/test.jsonl", hub_id="SetFit/sst5", split="test"),
        DataSource("sst5/train.jsonl", hub_id="SetFit/sst5", split="train")),
        "SST-5 test (2,210), fine-grained sentiment"),
}


def _register(short: str) -> None:
    spec, what = SETS[short]

    @register_task(f"icl_{short}", suites=("icl_cls", "icl"))
    def factory() -> Task:
        return icl_task(f"icl_{short}", spec, f"{what}: {SHOTS}-shot ICL, accuracy and macro-F1 over 5 seeds (PICL)")


for _short in SETS:
    _register(_short)
