"""PPT's downstream classification sets (suite `ppt`): SST-2, SST-5, RTE, CB, BoolQ, scored by verbalizer likelihood.

Protocol (PPT, Gu et al. 2022, "PPT: Pre-trained Prompt Tuning for Few-shot Learning", section 4): the model is
frozen and a soft prompt sits in front of every input (it comes with the checkpoint: `harness eval --model
PROMPT_DIR`); no demonstrations; each label has one word and the label whose `" " + word` is likeliest (summed
log-prob, no length normalisation) is the prediction. Accuracy x100. Tasks fall in the families of the pre-training
formats (`trainers/ppt_data.py`), which build their inputs with the same template functions below, so a prompt
pre-trained on a family meets the very format it was trained on:
- single sentence (SST-2, SST-5): `{sentence} It was` + one of terrible/bad/maybe/good/great (SST-2 uses
  terrible/great, the ends of the 5-point scale of the pseudo-labels);
- sentence pair (RTE, CB, BoolQ): `{first} Question: {second}? Answer:` + yes/maybe/no (RTE and BoolQ: yes/no);
- unified (`ppt_<set>_mc`, the paper's unified PPT): every task as multiple choice, its label words listed as
  lettered options after the family input, the answer a letter.
Differences from the paper: its backbone is T5 with the label word in a sentinel slot inside the template (e.g.
`s1 ? <X> , s2`); for a decoder-only model the word must come last, so the templates end in it.
Few-shot training and dev rows (32 each, label-balanced) come from each set's `pool` (`trainers/ppt.py`).
BoolQ has only its validation split here: its first 1,000 rows are the pool, the rest the test set.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from harness.data import read_rows
from harness.registry import register_task
from harness.task import DataSource, Doc, FewShot, Task, seed_mean
from harness.tasks.icl import _BINARY as _POLARITY
from harness.tasks.icl import _RTE, _SST5, SST2_DEV, SST2_TRAIN, ICLSet, _index, collapse, score_option

SINGLE_WORDS = ("terrible", "bad", "maybe", "good", "great")  # the 5-class pseudo-labels, worst to best
PAIR_WORDS = ("yes", "maybe", "no")  # next sentence: adjacent, same document, other document
LETTERS = "ABCDEF"
BOOLQ_POOL = 1000


def single_prompt(sentence: str) -> str:
    return f"{collapse(sentence)} It was"


def pair_prompt(first: str, second: str) -> str:
    return f"{collapse(first)} Question: {collapse(second).rstrip('.?!')}? Answer:"


def choice_prompt(context: str, options: list[str] | tuple[str, ...]) -> str:
    lines = "".join(f"\n{letter}. {collapse(option)}" for letter, option in zip(LETTERS, options))
    return f"{collapse(context)}{lines}\nAnswer:"


def options(words: tuple[str, ...]) -> list[str]:
    return [f" {word}" for word in words]


def ppt_task(name: str, spec: ICLSet, description: str, unified: bool = False) -> Task:
    """One downstream set; `unified` casts it as multiple choice over its label words."""
    prompt = (lambda doc: choice_prompt(spec.template(doc), spec.words)) if unified else spec.template
    choices = options(tuple(LETTERS[: len(spec.words)]) if unified else spec.words)
    return Task(
        name=name,
        description=description,
        data=spec.test,
        prompt=prompt,
        references=lambda doc: [choices[spec.label(doc)].strip()],
        scorer=partial(score_option, spec=spec, length_normalised=False),
        metrics=(seed_mean("acc"),),
        main_metric="acc",
        choices=lambda doc: choices,
        # k = 0: the prompt is the soft one; the pool is what the trainer draws its 32-shot splits from
        fewshot=FewShot(pool=spec.pool, k=0, demonstration=lambda row: "", label=spec.label),
    )


def _boolq_rows(part: slice) -> Callable:
    return lambda path: read_rows(path)[part]


_CB = _index({"entailment": 0, "contradiction": 2, "neutral": 1})  # yes / maybe / no
_BOOLQ = _index({True: 0, False: 1, "true": 0, "false": 1})


def _pair(first: str, second: str) -> Callable[[Doc], str]:
    return lambda doc: pair_prompt(doc[first], doc[second])


SETS: dict[str, tuple[ICLSet, str]] = {
    "sst2": (ICLSet(
        lambda d: single_prompt(d["sentence"]), ("terrible", "great"), _POLARITY,
        SST2_DEV, SST2_TRAIN),
        "SST-2 dev (872), sentiment"),
    "sst5": (ICLSet(
        lambda d: single_prompt(d["text"]), SINGLE_WORDS, _SST5,
        DataSource("sst5/test.jsonl", hub_id="SetFit/sst5", split="test"),
        DataSource("sst5/train.jsonl", hub_id="SetFit/sst5", split="train")),
        "SST-5 test (2,210), fine-grained sentiment"),
    "rte": (ICLSet(
        _pair("premise", "hypothesis"), ("yes", "no"), _RTE,
        DataSource("rte/val.jsonl", hub_id="super_glue", hub_config="rte", split="validation"),
        DataSource("rte/train.jsonl", hub_id="super_glue", hub_config="rte", split="train")),
        "RTE validation (277), entailment"),
    "cb": (ICLSet(
        _pair("premise", "hypothesis"), PAIR_WORDS, _CB,
        DataSource("cb/val.jsonl", hub_id="super_glue", hub_config="cb", split="validation"),
        DataSource("cb/train.jsonl", hub_id="super_glue", hub_config="cb", split="train")),
        "CB validation (56), three-way entailment"),
    "boolq": (ICLSet(
        _pair("passage", "question"), ("yes", "no"), _BOOLQ,
        DataSource("boolq/val.jsonl", reader=_boolq_rows(slice(BOOLQ_POOL, None))),
        DataSource("boolq/val.jsonl", reader=_boolq_rows(slice(0, BOOLQ_POOL)))),
        f"BoolQ validation after its first {BOOLQ_POOL:,} rows (2,270), yes/no questions"),
}


def _register(short: str, spec: ICLSet, what: str, suite: str) -> None:
    @register_task(f"ppt_{short}", suites=(suite,))
    def factory() -> Task:
        return ppt_task(f"ppt_{short}", spec, f"{what}: soft-prompt verbalizer scoring (PPT)")

    @register_task(f"ppt_{short}_mc", suites=(f"{suite}_unified",))
    def unified() -> Task:
        return ppt_task(f"ppt_{short}_mc", spec, f"{what}: as lettered multiple choice (unified PPT)", unified=True)


def register_sets(sets: dict[str, tuple[ICLSet, str]], suite: str) -> None:
    for short, (spec, what) in sets.items():
        _register(short, spec, what, suite)


register_sets(SETS, "ppt")


def _tiny_data():
    from harness import tiny_ppt

    return tiny_ppt.build().data


# The tiny default's downstream set: synthetic one-sentence reviews, negative or positive (harness/tiny_ppt.py).
SYNTH = ICLSet(lambda d: single_prompt(d["text"]), ("terrible", "great"), _POLARITY,
               DataSource("ppt_synth/test.jsonl", builtin=_tiny_data),
               DataSource("ppt_synth/pool.jsonl", builtin=_tiny_data))
register_sets({"synth": (SYNTH, "Synthetic reviews (200), polarity")}, "ppt_tiny")
