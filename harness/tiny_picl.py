"""The built-in tiny PICL default: a plain-text corpus whose paragraphs carry known intrinsic tasks, labelled
retriever training data, and an untrained tiny retriever encoder.

An intrinsic task is a (rule, surface form) pair. Rules: the eight instruction families of `harness.tiny_data`
(the input is the instruction and its input, the output the answer) and eight classification rules over the
numbers and words of the tiny vocabulary, each labelled with a pair of invented city names drawn per task, so
that only other paragraphs of the same task reveal which word means what. The three `icl_synth` rules (parity,
size, animal) are among them, but never with the label words `icl_synth` evaluates them with. Surface forms are
three templates (`FORMS`). A document holds `PARAGRAPHS_PER_DOCUMENT` paragraphs of tasks drawn independently,
so same-task paragraphs sit in different documents: plain LM chunks rarely show a task twice, which is the
situation PICL's retrieval is for. The labels are kept beside the corpus (never read by training) to measure the
retriever's precision@k.

Built once under ``<cache root>/tiny-picl-v2/`` (locked, swapped in by one rename, as `harness.tiny`), in
seconds: ``student/`` (the untrained tiny student of `harness.tiny`, made without training the teacher, which PICL
never reads), ``corpus.jsonl`` (one document per line, ``{"text": ...}``, paragraphs separated by a blank
line), ``corpus_labels.json`` (the task of every paragraph, in corpus order), ``retriever_train.jsonl`` (rows
``{"text", "task", "form"}``: the labelled tasks, drawn apart from the corpus) and ``retriever/`` (a 2-layer BERT
encoder on the tiny tokenizer, its ``<|endoftext|>`` token serving as CLS).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import tiny
from harness.tiny_data import CAPITALS, FAMILIES, WORDS, write_jsonl

VERSION = "tiny-picl-v2"  # bump whenever the corpus, the retriever data, the retriever or the layout change
DRAWS = "tiny-picl-v1"  # names the random draws of tasks, corpus and retriever data: a layout change keeps them
# One line each: the ICL suites collapse whitespace, so `icl_synth` shows "Input: 23 Label: Quelth" per line.
FORMS = {"input-label": "Input: {x} Label: {y}", "qa": "Question: {x} Answer: {y}", "arrow": "{x} => {y}"}
PAIRS_PER_RULE = 3  # label-word pairs, hence tasks, per classification rule and form
PARAGRAPHS_PER_DOCUMENT = 6
DOCUMENTS = 800
RETRIEVER_ROWS_PER_TASK = 24
ANIMALS = {"cat", "dog", "fish", "bird", "frog", "owl", "bee"}

Rule = Callable[[random.Random], tuple[str, bool]]  # rng -> (input text, which of the two labels)


def _number(test: Callable[[int], bool]) -> Rule:
    def rule(rng: random.Random) -> tuple[str, bool]:
        n = rng.randint(0, 49)
        return str(n), test(n)
    return rule


def _word(test: Callable[[str], bool]) -> Rule:
    def rule(rng: random.Random) -> tuple[str, bool]:
        word = rng.choice(WORDS)
        return word, test(word)
    return rule


RULES: dict[str, Rule] = {
    "parity": _number(lambda n: n % 2 == 1), "size": _number(lambda n: n >= 25),
    "below-ten": _number(lambda n: n < 10), "three": _number(lambda n: n % 3 == 0),
    "five": _number(lambda n: n % 5 == 0), "animal": _word(lambda w: w in ANIMALS),
    "short": _word(lambda w: len(w) <= 3), "has-o": _word(lambda w: "o" in w),
}


@dataclass(frozen=True)
class Task:
    name: str  # the label the retriever should recover: rule, label words and form
    form: str
    draw: Callable[[random.Random], str]  # one paragraph of this task


def _classification(rule: Rule, words: tuple[str, str], form: str) -> Callable[[random.Random], str]:
    def draw(rng: random.Random) -> str:
        text, label = rule(rng)
        return FORMS[form].format(x=text, y=words[int(label)])
    return draw


def _instruction(family: str, form: str) -> Callable[[random.Random], str]:
    def draw(rng: random.Random) -> str:
        instruction, input_text, output = FAMILIES[family](rng)
        return FORMS[form].format(x=f"{instruction} {input_text}".strip(), y=output)
    return draw


def tasks(seed: int = tiny.SEED) -> list[Task]:
    """Every intrinsic task: 8 instruction families and 8 rules x `PAIRS_PER_RULE` label pairs, in 3 forms."""
    from harness.tasks.icl_synth import label_words

    evaluated = {frozenset(label_words(name)) for name in ("parity", "size", "animal")}
    pairs = [pair for pair in itertools.combinations(sorted(CAPITALS.values()), 2) if frozenset(pair) not in evaluated]
    rng = random.Random(f"{DRAWS}-{seed}-pairs")
    found = []
    for form in FORMS:
        found += [Task(f"{family}/{form}", form, _instruction(family, form)) for family in FAMILIES]
        for rule_name, rule in RULES.items():
            for words in rng.sample(pairs, PAIRS_PER_RULE):
                found.append(Task(f"{rule_name}:{words[0]}/{words[1]}/{form}", form,
                                  _classification(rule, words, form)))
    return found


def corpus(all_tasks: list[Task], rng: random.Random, documents: int) -> tuple[list[str], list[str]]:
    """Documents (paragraphs joined by blank lines) and the task name of every paragraph, in order."""
    texts, labels = [], []
    for _ in range(documents):
        drawn = [rng.choice(all_tasks) for _ in range(PARAGRAPHS_PER_DOCUMENT)]
        texts.append("\n\n".join(task.draw(rng) for task in drawn))
        labels += [task.name for task in drawn]
    return texts, labels


def retriever_rows(all_tasks: list[Task], rng: random.Random, per_task: int) -> list[dict]:
    rows = [{"text": task.draw(rng), "task": task.name, "form": task.form} for task in all_tasks
            for _ in range(per_task)]
    rng.shuffle(rows)
    return rows


def make_retriever(tokenizer_folder: Path, folder: Path, seed: int = tiny.SEED) -> None:
    """An untrained BERT encoder (hidden 64, 2 layers) with the tiny tokenizer, `<|endoftext|>` as its CLS."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_folder)
    tokenizer.cls_token = tiny.EOT
    eot = tokenizer.convert_tokens_to_ids(tiny.EOT)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, pad_token_id=eot,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@dataclass(frozen=True)
class TinyPICLPaths:
    student: Path  # the untrained tiny student (`harness.tiny`'s), where PICL and ExtraLM both start
    retriever: Path  # untrained tiny encoder
    corpus: Path  # corpus.jsonl
    labels: Path  # corpus_labels.json
    retriever_data: Path  # retriever_train.jsonl


def _build_into(folder: Path) -> None:
    student = tiny.save_student(folder / "student")
    all_tasks = tasks()
    texts, labels = corpus(all_tasks, random.Random(f"{DRAWS}-corpus"), DOCUMENTS)
    write_jsonl(folder / "corpus.jsonl", [{"text": text} for text in texts])
    (folder / "corpus_labels.json").write_text(json.dumps(labels))
    write_jsonl(folder / "retriever_train.jsonl",
                retriever_rows(all_tasks, random.Random(f"{DRAWS}-retriever"), RETRIEVER_ROWS_PER_TASK))
    make_retriever(student, folder / "retriever")


def build(cache_root: Path | None = None, force: bool = False) -> TinyPICLPaths:
    """The tiny student, PICL corpus, retriever data and retriever (seconds)."""
    folder = tiny.cached_build(VERSION, _build_into, cache_root, force)
    return TinyPICLPaths(student=folder / "student", retriever=folder / "retriever", corpus=folder / "corpus.jsonl",
                         labels=folder / "corpus_labels.json", retriever_data=folder / "retriever_train.jsonl")
