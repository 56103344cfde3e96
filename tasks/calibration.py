"""MiniLLM's calibration analysis: zero-shot classification with label words, scored by accuracy and ECE
(`calibration_sst2`, `calibration_boolq`, and `calibration_synth` on the tiny default's parity family).

Protocol (MiniLLM, Gu et al. 2024, calibration analysis; ECE as HELM reports it): the model reads an instruction in
the Alpaca template the MiniLLM models are trained on and answers with one of the label words; each label word is
scored by its log-likelihood after the prompt, the prediction is the likeliest word, and its confidence is its
probability renormalised over the label words. Metrics, all in percent: accuracy, ECE with 10 equal-mass bins
(`ece`, the main metric; lower is better; its standard error and interval by a seeded bootstrap over documents),
10 equal-width bins (`ece_equal_width`) and one bin (`ece_1bin`). Beside them, `ece_raw` (10 equal-mass bins) takes
as confidence the raw probability of the chosen label word's first token, not renormalised over the label words: the
reading the paper's numbers suggest (`negative`, `positive`, `no`, `yes` are one token each for GPT-2, so there it is
the word's probability). The options are scored token by token for it. The reliability diagram (details.reliability)
uses the reported ECE's binning: 10 equal-mass bins of the renormalised confidence.
Data: the GLUE SST-2 and SuperGLUE BoolQ validation splits (their test labels are hidden) from the hub ids
`glue`/`sst2` and `super_glue`/`boolq`, or in a local folder laid out like shared/data: `sst2/stsa.binary.dev`
(`<label> <sentence>` lines, the same 872 sentences) and `boolq/val.jsonl` (`question`, `passage`, `label` as
"true"/"false").
Differences from the paper: its instruction wording is not released; ours is below.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import read_label_lines, read_rows
from harness.metrics.calibration import ece, reliability_bins
from harness.metrics.stats import bootstrap_uncertainty, with_uncertainty
from harness.registry import register_task
from harness.store import atomic_write
from harness.task import ChoicePrediction, DataSource, Doc, Task
from harness.tasks.synth import tiny_data
from harness.tiny_data import alpaca_prompt

SST2_WORDS = ["negative", "positive"]  # GLUE label 0, 1
BOOLQ_WORDS = ["no", "yes"]  # SuperGLUE label 0 (False), 1 (True)
N_BINS = 10
BINNING = "equal_mass"  # of the reported ECE (HELM's default) and of the reliability diagram


def _label(doc: Doc, words: list[str]) -> int:
    label = {"false": 0, "true": 1}.get(doc["label"], doc["label"])  # BoolQ's label strings in shared/data
    if not isinstance(label, int) or not 0 <= label < len(words):
        raise ValueError(f"label {label!r} is not one of 0..{len(words) - 1} (test splits hide labels)")
    return label


def sst2_prompt(doc: Doc) -> str:
    return alpaca_prompt("Is the sentiment of the following sentence positive or negative?", doc["sentence"])


def boolq_prompt(doc: Doc) -> str:
    question = doc["question"].rstrip("?")
    return alpaca_prompt("Read the passage and answer the question with yes or no.",
                         f"{doc['passage']}\nQuestion: {question}?")


def synth_prompt(doc: Doc) -> str:
    return doc["prompt"]


def score_choice(doc: Doc, prediction: ChoicePrediction, *, words) -> dict[str, float]:
    """Correctness of the likeliest label word and its probability renormalised over the label words."""
    options = words(doc)
    gold = options.index(_gold_word(doc, options))
    top = max(prediction.logprobs)
    weights = [math.exp(lp - top) for lp in prediction.logprobs]
    return {"acc": float(prediction.chosen == gold), "confidence": weights[prediction.chosen] / sum(weights),
            "confidence_raw": math.exp(prediction.first_token_logprobs[prediction.chosen])}


def _gold_word(doc: Doc, options: list[str]) -> str:
    if "label" in doc:
        return options[_label(doc, options)]
    if doc.get("output") not in options:
        raise ValueError(f"output {doc.get('output')!r} is not one of the choices {options}")
    return doc["output"]


def calibration_metrics(samples: list[dict[str, Any]]) -> dict[str, Any]:
    confidence = np.array([c for s in samples for c in s["scores"]["confidence"]])
    raw = np.array([c for s in samples for c in s["scores"]["confidence_raw"]])
    correct = np.array([a for s in samples for a in s["scores"]["acc"]])
    return {
        **with_uncertainty("acc", correct, 100.0),
        "ece": 100.0 * ece(confidence, correct, N_BINS, BINNING),
        **bootstrap_uncertainty("ece", lambda docs: 100.0 * ece(confidence[docs], correct[docs], N_BINS, BINNING),
                                len(correct)),
        "ece_equal_width": 100.0 * ece(confidence, correct, N_BINS, "equal_width"),
        "ece_1bin": 100.0 * ece(confidence, correct, 1),
        "ece_raw": 100.0 * ece(raw, correct, N_BINS, BINNING),
        "num_predictions": float(len(correct)),
    }


def reliability_details(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The reliability bins of the reported ECE (`ece`: its binning, its predictions), for the report's diagram."""
    confidence = [c for s in samples for c in s["scores"]["confidence"]]
    correct = [a for s in samples for a in s["scores"]["acc"]]
    bins = reliability_bins(confidence, correct, N_BINS, BINNING)
    return {"reliability": {"metric": "ece", "binning": BINNING, "n_bins": N_BINS,
                            "bins": [b.as_dict() for b in bins]}}


def calibration_task(name: str, data: DataSource, prompt, words, description: str) -> Task:
    """One zero-shot classification task; `words(doc)` gives the label words in label order."""
    return Task(
        name=name,
        description=description,
        data=data,
        prompt=prompt,
        references=lambda doc: [_gold_word(doc, words(doc))],
        scorer=partial(score_choice, words=words),
        metrics=(calibration_metrics,),
        main_metric="ece",
        higher_is_better=False,
        choices=words,
        option_tokens=True,  # ece_raw reads the first token of the chosen word
        details=reliability_details,
    )


def write_classification_subset(synth_folder: Path, out_root: Path) -> Path:
    """A data folder holding `synth/classification.jsonl`: the rows of `synth/test.jsonl` that carry `choices`.

    A file of its own, so `--limit N` means N classification rows rather than the first N rows of every family.
    """
    rows = [row for row in read_rows(synth_folder / "synth" / "test.jsonl") if row.get("choices")]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    folder = out_root / f"harness-synth-classification-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    path = folder / "synth" / "classification.jsonl"
    if not path.is_file():  # named by content, so an existing file is already the right one
        atomic_write(path, text)
    return folder


def synth_classification_data() -> Path:
    return write_classification_subset(tiny_data(), Path(tempfile.gettempdir()))


@register_task("calibration_sst2", suites=("calibration",))
def calibration_sst2() -> Task:
    data = DataSource(local_file="sst2/stsa.binary.dev", reader=read_label_lines, hub_id="glue", hub_config="sst2",
                      split="validation")
    return calibration_task("calibration_sst2", data, sst2_prompt, lambda doc: SST2_WORDS,
                            "SST-2 validation, zero-shot sentiment: accuracy and ECE (MiniLLM calibration)")


@register_task("calibration_boolq", suites=("calibration",))
def calibration_boolq() -> Task:
    data = DataSource(local_file="boolq/val.jsonl", hub_id="super_glue", hub_config="boolq",
                      split="validation")
    return calibration_task("calibration_boolq", data, boolq_prompt, lambda doc: BOOLQ_WORDS,
                            "BoolQ validation, zero-shot yes/no: accuracy and ECE (MiniLLM calibration)")


@register_task("calibration_synth")
def calibration_synth() -> Task:
    data = DataSource(local_file="synth/classification.jsonl", builtin=synth_classification_data)
    return calibration_task("calibration_synth", data, synth_prompt, lambda doc: list(doc["choices"]),
                            "Synthetic parity classification of the tiny default: accuracy and ECE")
