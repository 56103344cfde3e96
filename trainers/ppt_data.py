"""PPT's self-supervised pre-training data: rows in the format of each downstream task family, from unlabelled text.

Every row is `{"prompt": ..., "options": [...], "label": i}`, the same shape as a downstream few-shot row
(`trainers/ppt.py`), written with the downstream templates of `tasks/ppt.py`. From documents split into sentences
(section 3.3 of the PPT paper):
- `pair`, next-sentence prediction with three labels, each 1/3: the sentence right after = "yes", another sentence of
  the same document = "maybe", a sentence of another document = "no";
- `choice`, next-sentence selection: up to 6 lettered options (the true next sentence, one other sentence of the
  same document, the rest from other documents, shuffled), the answer the true one's letter;
- `single`, 5-class sentiment: each sentence with its pseudo-label (terrible/bad/maybe/good/great) from a
  classifier (`pseudo_labels`, an HF sequence classifier with 5 labels, worst first);
- `unified`: the three above, each cast as lettered multiple choice (pair and single list their label words).
Differences from the paper: its "maybe" negatives are sentences at least two apart; here any other sentence of the
document that is not the next one (so an earlier neighbour may appear); the paper's pseudo-labeller is a RoBERTa
trained on Yelp-5, here any 5-label classifier the recipe names.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from harness.errors import HarnessError
from harness.tasks.ppt import LETTERS, PAIR_WORDS, SINGLE_WORDS, choice_prompt, options, pair_prompt, single_prompt

FORMATS = ("pair", "choice", "single", "unified")
Row = dict  # {"prompt": str, "options": list[str], "label": int}


def sentences(text: str) -> list[str]:
    """A document's sentences: split after . ! or ? followed by whitespace."""
    return [part.strip() for part in re.split(r"(?<=[.!?])\s+", text) if part.strip()]


def _other(documents: list[list[str]], index: int, rng: random.Random) -> str:
    """A random sentence of a document other than `index`."""
    pick = rng.randrange(len(documents) - 1)
    return rng.choice(documents[pick + (pick >= index)])


def _same(document: list[str], position: int, rng: random.Random) -> str | None:
    """A sentence of the same document that is neither this one nor the next, or None when there is none."""
    others = [i for i in range(len(document)) if i not in (position, position + 1)]
    return document[rng.choice(others)] if others else None


def pair_row(documents: list[list[str]], index: int, position: int, rng: random.Random) -> Row:
    document = documents[index]
    label = rng.randrange(3)
    second = {0: document[position + 1], 1: _same(document, position, rng)}.get(label) or _other(documents, index, rng)
    label = 2 if second not in document else label  # a document too short for "maybe" gives a "no"
    return {"prompt": pair_prompt(document[position], second), "options": options(PAIR_WORDS), "label": label}


def choice_row(documents: list[list[str]], index: int, position: int, rng: random.Random,
               size: int = len(LETTERS)) -> Row:
    document = documents[index]
    candidates = [document[position + 1]]
    same = _same(document, position, rng)
    candidates += [same] if same else []
    while len(candidates) < size:
        other = _other(documents, index, rng)
        if other not in candidates:
            candidates.append(other)
    order = list(range(len(candidates)))
    rng.shuffle(order)
    shown = [candidates[i] for i in order]
    return {"prompt": choice_prompt(document[position], shown), "options": options(tuple(LETTERS[: len(shown)])),
            "label": order.index(0)}


def single_row(sentence: str, label: int) -> Row:
    return {"prompt": single_prompt(sentence), "options": options(SINGLE_WORDS), "label": label}


def as_choice(row: Row) -> Row:
    """A pair or single row as lettered multiple choice over its label words (unified PPT)."""
    words = [option.strip() for option in row["options"]]
    letters = options(tuple(LETTERS[: len(words)]))
    return {"prompt": choice_prompt(row["prompt"], words), "options": letters, "label": row["label"]}


def pseudo_labels(texts: list[str], classifier: str, batch_size: int = 64) -> list[int]:
    """Each text's argmax label under an HF sequence classifier with 5 labels (worst first)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.models import check_local

    check_local(classifier)
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    if model.config.num_labels != len(SINGLE_WORDS):
        raise HarnessError(f"the classifier {classifier} has {model.config.num_labels} labels; the single-sentence "
                           f"format needs {len(SINGLE_WORDS)} (worst first): choose a 5-class sentiment classifier")
    tokenizer = AutoTokenizer.from_pretrained(classifier)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    labels: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                                truncation=True, max_length=128)
            labels += model(**encoded).logits.argmax(-1).tolist()
    return labels


def pretraining_rows(texts: list[str], form: str, classifier: str, size: int, seed: int) -> list[Row]:
    """`size` rows of format `form` from the documents `texts` (fewer when the corpus is small)."""
    if form not in FORMATS:
        raise HarnessError(f"format={form!r}: choose one of {', '.join(FORMATS)}")
    rng = random.Random(seed)
    documents = [found for found in map(sentences, texts) if found]
    if len(documents) < 2:
        raise HarnessError("the pre-training corpus needs at least two documents with sentences")
    if form == "unified":
        share = -(-size // 3)
        return [*(as_choice(row) for row in pretraining_rows(texts, "pair", classifier, share, seed)),
                *pretraining_rows(texts, "choice", classifier, share, seed + 1),
                *(as_choice(row) for row in pretraining_rows(texts, "single", classifier, share, seed + 2))][:size]
    if form == "single":
        if not classifier:
            raise HarnessError("the single-sentence format needs pseudo-labels: set classifier=<HF 5-class "
                               "sequence classifier>")
        pool = [sentence for document in documents for sentence in document]
        chosen = rng.sample(pool, min(size, len(pool)))
        return [single_row(text, label) for text, label in zip(chosen, pseudo_labels(chosen, classifier))]
    places = [(i, p) for i, document in enumerate(documents) for p in range(len(document) - 1)]
    build = pair_row if form == "pair" else choice_row
    return [build(documents, i, p, rng) for i, p in rng.sample(places, min(size, len(places)))]


def read_corpus(path: Path, text_field: str = "text") -> list[str]:
    """The documents of a JSONL corpus (one object per line with a text field) or a plain-text file (one
    document per non-empty line)."""
    from harness.data import read_json_lines, read_text

    if not path.is_file():
        raise HarnessError(f"no corpus at {path}: set corpus to a JSONL file of documents or a text file")
    if path.suffix != ".jsonl":
        return [line for line in read_text(path).splitlines() if line.strip()]
    rows = read_json_lines(path)
    if not all(isinstance(row.get(text_field), str) for row in rows):
        raise HarnessError(f"a row of {path} has no {text_field!r} text: set corpus_field to the documents' field")
    return [row[text_field] for row in rows]
