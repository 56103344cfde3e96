"""The built-in tiny PPT default: a synthetic review world, its unlabelled corpus, a small language model pre-trained
on it, a tiny pseudo-label classifier and a downstream polarity task.

Each sentence says how something was ("the soup was dreadful."); its adjective has one of five grades
(terrible .. great). The corpus holds documents of several such sentences about one outing, unlabelled; now and
then a writer sums a sentence up ("It was terrible."), the way real text holds the words a verbalizer uses. The
frozen model of PPT is a language model pre-trained on that corpus (`model/`, the tiny student's shape, its own
byte-level BPE: the corpus's words are single tokens), as PPT assumes a pre-trained model that knows the language.
The same corpus feeds the pre-training formats (`trainers/ppt_data.py`). A labelled set of graded sentences trains a
tiny HF sequence classifier (`classifier/`, 5 labels), the stand-in for the sentiment classifier whose pseudo-labels
PPT uses. The downstream set `ppt_synth` (tasks/ppt.py) asks negative (grade 1) or positive (grade 3) of one sentence
built from other templates, so none of it is copied from the corpus, with the scale's end words as verbalizer.
Built once under ``<cache root>/tiny-ppt-v2/``.

Layout: ``model/`` and ``classifier/`` (HF folders), ``data/ppt_corpus.jsonl`` (text per document),
``data/ppt_synth/{pool,test}.jsonl`` (text, label 0/1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from harness.tasks.ppt import SINGLE_WORDS
from harness.tiny import SEED, STUDENT, TrainRecipe, cached_build, make_model, train_teacher, train_tokenizer
from harness.tiny_data import write_jsonl

VERSION = "tiny-ppt-v2"  # bump whenever the data or the classifier change
GRADES = (
    ("awful", "dreadful", "horrid"),
    ("poor", "dull", "weak"),
    ("okay", "average", "plain"),
    ("nice", "pleasant", "solid"),
    ("superb", "wonderful", "brilliant"),
)
THINGS = ("soup", "film", "hotel", "book", "song", "game", "park", "show", "bread", "bus", "room", "view")
CORPUS_TEMPLATES = ("the {thing} was {adj}.", "we thought the {thing} was {adj}.", "honestly the {thing} felt {adj}.")
TASK_TEMPLATES = ("my {thing} was {adj} today", "a {adj} {thing}, all in all", "everyone called the {thing} {adj}")
CORPUS_DOCS, CLASSIFIER_ROWS, POOL, TEST = 400, 1500, 200, 200
SUMMED_UP = 0.02  # the share of corpus sentences followed by "It was <grade word>."
LM_RECIPE = TrainRecipe(steps=300, batch_size=32, peak_lr=3e-3, warmup_steps=20)


@dataclass(frozen=True)
class TinyPPTPaths:
    model: Path  # the frozen model: an LM pre-trained on the corpus
    classifier: Path  # HF sequence classifier, 5 labels
    corpus: Path  # JSONL documents
    data: Path  # folder holding ppt_synth/{pool,test}.jsonl


def sentence(rng: random.Random, grade: int, templates: tuple[str, ...]) -> str:
    return rng.choice(templates).format(thing=rng.choice(THINGS), adj=rng.choice(GRADES[grade]))


def corpus(rng: random.Random, size: int = CORPUS_DOCS) -> list[dict]:
    """Documents of 3-6 sentences; an outing's mood drifts by at most one grade from sentence to sentence."""
    docs = []
    for _ in range(size):
        grade, sentences = rng.randrange(5), []
        for _ in range(rng.randint(3, 6)):
            sentences.append(sentence(rng, grade, CORPUS_TEMPLATES).capitalize())
            if rng.random() < SUMMED_UP:
                sentences.append(f"It was {SINGLE_WORDS[grade]}.")
            grade = min(4, max(0, grade + rng.choice((-1, 0, 1))))
        docs.append({"text": " ".join(sentences)})
    return docs


def polarity_rows(rng: random.Random, size: int) -> list[dict]:
    """Half mildly negative (grade 1, label 0), half mildly positive (grade 3, label 1): the verbalizer's words
    (terrible, great) are the scale's ends, which the corpus uses after grades 0 and 4."""
    rows = [{"text": sentence(rng, 1 + 2 * (i % 2), TASK_TEMPLATES), "label": i % 2} for i in range(size)]
    rng.shuffle(rows)
    return rows


def train_classifier(folder: Path, tokenizer_folder: Path, rng: random.Random, steps: int = 150) -> None:
    """A one-layer Llama sequence classifier on graded corpus-style sentences (label = grade)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    rows = [(sentence(rng, grade, CORPUS_TEMPLATES).capitalize(), grade)
            for grade in (rng.randrange(5) for _ in range(CLASSIFIER_ROWS))]
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=64, num_labels=5,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=256)
    model = LlamaForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = [rows[(step * 32 + i) % len(rows)] for i in range(32)]
        encoded = tokenizer([text for text, _ in batch], return_tensors="pt", padding=True)
        loss = model(**encoded, labels=torch.tensor([grade for _, grade in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _build_into(folder: Path) -> None:
    rng = random.Random(f"{VERSION}-{SEED}")
    (folder / "data" / "ppt_synth").mkdir(parents=True)
    documents = corpus(rng)
    pool, test = polarity_rows(rng, POOL), polarity_rows(rng, TEST)
    write_jsonl(folder / "data" / "ppt_corpus.jsonl", documents)
    write_jsonl(folder / "data" / "ppt_synth" / "pool.jsonl", pool)
    write_jsonl(folder / "data" / "ppt_synth" / "test.jsonl", test)
    texts = [doc["text"] for doc in documents]
    tokenizer = train_tokenizer(texts + [row["text"] for row in pool])
    model = make_model(STUDENT, tokenizer, seed=SEED + 3)
    train_teacher(model, tokenizer, [{"prompt": "", "output": text} for text in texts], LM_RECIPE, progress=False)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    train_classifier(folder / "classifier", folder / "model", rng)


def build(cache_root: Path | None = None, force: bool = False) -> TinyPPTPaths:
    """Build the tiny PPT data, model and classifier once (about a minute on a CPU) under ``cache_root``."""
    folder = cached_build(VERSION, _build_into, cache_root, force)
    return TinyPPTPaths(model=folder / "model", classifier=folder / "classifier",
                        corpus=folder / "data" / "ppt_corpus.jsonl", data=folder / "data")
