"""PICL (Gu et al., ACL 2023): pre-training on paragraphs that share an intrinsic task, to learn in context.

Pipeline (Sec. 2 of the paper; each stage's result is saved under `artifacts_dir` in a folder named by a hash of
everything it depends on, and reused by any later run that needs it):
1. the corpus split into paragraphs, tokenised once into memory-mapped stores (`picl_retrieval.TokenStore`);
2. a task-semantics retriever trained with the in-batch contrastive loss (`picl_retrieval.train_retriever`);
3. for each paragraph its k = 20 nearest paragraphs (`picl_retrieval.nearest_neighbours`);
4. optionally, only instances whose demonstrations lower the LM loss of the query paragraph are kept;
5. instances: each paragraph cut to 255 tokens plus a newline, at most 16 demonstrations, the farthest dropped
   until the whole fits in 1,024 tokens, shuffled with a seed, the query paragraph last (`build_instance`);
6. the plain LM loss on every token, every batch half instances and half full-document LM chunks (`mixed_rows`).

ExtraLM, the paper's baseline, is the same trainer without stages 2-5: the same corpus as full-document LM chunks.

Paper / released code (thu-coai/PICL) versus this file:
- the released code fits an instance in fewer than 1,024 tokens (`>=` in `_get_icl`); here in at most `max_length`;
- paragraphs are the corpus's own (placeholder- or blank-line-separated); the released `process_corpus.py` also
  joins short consecutive lines up to 128 retriever tokens and removes duplicate paragraphs;
- the filter compares the loss of the query paragraph's tokens (after its first) with and without the
  demonstrations; the released `filter.py` averages over every paragraph of the instance;
- the released retriever's negatives are drawn once into its data file; here per step (`picl_retrieval`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from harness.errors import HarnessError
from harness.store import write_json
from harness.tiny import locked
from harness.trainers import register_trainer
from harness.trainers.base import TrainConfig, Trainer
from harness.trainers.data import Example, batch_indices, chunked, pad_examples, read_jsonl, shard
from harness.trainers.picl_retrieval import (
    TokenStore,
    embed_paragraphs,
    nearest_neighbours,
    precision_at_k,
    read_documents,
    train_retriever,
)
from harness.trainers.sft import cross_entropy


# ---- instances, as pure functions ---------------------------------------------------------------------------
def build_instance(query: list[int], neighbours: Sequence[list[int]], separator: list[int], max_paragraph_tokens: int,
                   max_length: int, max_demonstrations: int, rng: random.Random) -> list[int]:
    """Demonstrations then the query, each paragraph cut to `max_paragraph_tokens` including its separator.

    `neighbours` come nearest first: at most `max_demonstrations` are kept, then the farthest are dropped until
    the instance fits in `max_length` tokens; the kept ones are shuffled with `rng`.
    """
    keep = max_paragraph_tokens - len(separator)
    demonstrations = [list(ids[:keep]) + separator for ids in neighbours[:max_demonstrations]]
    last = list(query[:keep]) + separator
    while demonstrations and len(last) + sum(map(len, demonstrations)) > max_length:
        demonstrations.pop()
    rng.shuffle(demonstrations)
    return [token for ids in demonstrations for token in ids] + last


def mixed_rows(step: int, instances: int, chunks: int, batch_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Rows of batch `step` (1-based): half PICL instances, half LM chunks, each stream its own seeded epochs."""
    half = batch_size // 2
    return (batch_indices(instances, half, step - 1, seed),
            batch_indices(chunks, batch_size - half, step - 1, seed + 1))


def document_chunks(documents: TokenStore, paragraphs: TokenStore, first: int, last: int, separator: list[int],
                    eos: int, length: int):
    """Documents `first` to `last - 1` (paragraphs joined by `separator`, eos after each) as full `length` chunks."""
    stream: list[int] = []
    for document in range(first, last):
        start, end = documents[document]
        for index in range(start, end):
            stream += paragraphs[index] + (separator if index < end - 1 else [eos])
        while len(stream) >= length:
            yield stream[:length]
            stream = stream[length:]


class StoredExamples:
    """Sequences of a `TokenStore` as LM examples (the loss on every token), read on demand."""

    def __init__(self, store: TokenStore, limit: int | None = None):
        self.store, self.count = store, min(len(store), limit if limit is not None else len(store))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        return Example([], self.store[index])


# ---- configs -------------------------------------------------------------------------------------------------
@dataclass
class ExtraLMConfig(TrainConfig):
    """A plain-text corpus trained on as full-document LM chunks of `max_length` tokens."""

    corpus_file: Path = Path("data/corpus.jsonl")  # .txt: one document per line, paragraphs split by <@x(x!>;
    # .jsonl: a "text" field per document, paragraphs split by blank lines
    max_documents: int | None = None  # use only the first N documents
    valid_documents: int = 16  # the last N documents are held out: their chunks give valid_loss
    artifacts_dir: Path = Path("runs/picl-artifacts")  # stores, retriever, neighbours, instances (reused)
    max_length: int = 1024  # tokens per LM chunk and per PICL instance

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.valid_documents < 1:
            raise HarnessError("valid_documents must be at least 1 (their chunks choose the checkpoint)")


@dataclass
class PICLConfig(ExtraLMConfig):
    retriever: str = "roberta-base"  # any HF encoder folder or hub id
    retriever_data: Path = Path("data/retriever_train.jsonl")  # rows {"text", "task", "form"} (picl_retrieval)
    retriever_batch_size: int = 64  # queries per step, each with 1 positive, 1 easy and 4 hard negatives
    retriever_lr: float = 5e-5
    retriever_epochs: int = 10
    retriever_max_tokens: int = 256  # released --max-length 256
    retriever_save_every: int = 100  # retriever steps between resumable checkpoints
    corpus_labels: Path | None = None  # JSON list of each paragraph's task (synthetic corpora): precision@k
    k: int = 20  # neighbours retrieved per paragraph
    search_backend: str = "faiss"  # faiss (exact flat index) or torch (exact top-k)
    search_metric: str = "l2"  # l2, as the released search; ip: the retriever's dot-product score
    embed_batch_size: int = 256
    max_paragraph_tokens: int = 256  # per paragraph including its newline (255 + 1)
    max_demonstrations: int = 16
    filter_threshold: float | None = None  # keep an instance when its demonstrations lower the query's loss by
    # more than this (released: 0.0); null: keep every instance

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search_backend not in ("faiss", "torch") or self.search_metric not in ("l2", "ip"):
            raise HarnessError("search_backend must be faiss or torch and search_metric l2 or ip")
        if not 1 < self.max_paragraph_tokens <= self.max_length:
            raise HarnessError(f"max_paragraph_tokens={self.max_paragraph_tokens} must be between 2 and "
                               f"max_length={self.max_length}")
        if self.batch_size % 2:
            raise HarnessError(f"batch_size={self.batch_size} must be even: each batch is half PICL instances, "
                               "half LM chunks")
        if min(self.k, self.max_demonstrations, self.retriever_batch_size, self.retriever_save_every) < 1:
            raise HarnessError("k, max_demonstrations, retriever_batch_size and retriever_save_every must be >= 1")


def _identity(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"no file at {path}: check the corpus_file / retriever_data settings")
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "modified": stat.st_mtime_ns}


def stage_folder(root: Path, stage: str, settings: dict) -> Path:
    """`root/<stage>-<hash of settings>`: one folder per distinct input, so reruns find their earlier results."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return Path(root) / f"{stage}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# ---- the trainers --------------------------------------------------------------------------------------------
@register_trainer("extralm")
class ExtraLMTrainer(Trainer):
    """The corpus as plain LM chunks; PICL adds its instances to this."""

    config_class = ExtraLMConfig

    def prepare_data(self) -> None:
        state = self.accelerator
        if state.is_main_process:
            Path(self.config.artifacts_dir).mkdir(parents=True, exist_ok=True)
            with locked(Path(self.config.artifacts_dir) / ".lock"):  # a second run waits, then reuses
                self.build_artifacts()
        state.wait_for_everyone()
        if not state.is_main_process:
            self.build_artifacts()  # finds and opens what the main process built
        self.train_examples = StoredExamples(TokenStore(self.chunks / "lm-train"))
        self.valid_examples = StoredExamples(TokenStore(self.chunks / "lm-valid"), self.config.max_eval_samples)
        if not len(self.train_examples) or not len(self.valid_examples):
            raise HarnessError(f"the corpus gives {len(self.train_examples)} training and {len(self.valid_examples)}"
                               f" validation chunks of {self.config.max_length} tokens: add text, lower max_length"
                               " or change valid_documents")
        self.total_steps = self.supervised_steps(self.training_rows())

    def training_rows(self) -> int:
        return len(self.train_examples)

    def build_artifacts(self) -> None:
        self.corpus = self.build_corpus()
        self.chunks = self.build_chunks()

    @cached_property
    def separator(self) -> list[int]:
        return self.tokenizer("\n", add_special_tokens=False)["input_ids"]

    def corpus_settings(self) -> dict:
        config = self.config
        vocab = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        return {"corpus": _identity(config.corpus_file), "max_documents": config.max_documents,
                "valid_documents": config.valid_documents, "tokenizer": hashlib.sha256(vocab.encode()).hexdigest()}

    def build_corpus(self) -> Path:
        """Every paragraph's tokens, and each document's range of paragraphs (written last: it marks the end)."""
        config = self.config
        folder = stage_folder(config.artifacts_dir, "corpus", self.corpus_settings())
        if (folder / "documents").is_dir():
            return folder
        documents: list[list[int]] = []

        def paragraphs():
            for number, texts in enumerate(read_documents(Path(config.corpus_file))):
                if number == config.max_documents:
                    return
                start = documents[-1][1] if documents else 0
                documents.append([start, start + len(texts)])
                yield from self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

        TokenStore.write(folder / "paragraphs", paragraphs())
        if len(documents) <= config.valid_documents:
            raise HarnessError(f"{len(documents)} documents leave none for training after valid_documents="
                               f"{config.valid_documents}: lower valid_documents")
        TokenStore.write(folder / "documents", iter(documents))
        return folder

    def build_chunks(self) -> Path:
        """Full-document LM chunks of `max_length`: the training documents', and the held-out ones'."""
        folder = stage_folder(self.config.artifacts_dir, "chunks", {**self.corpus_settings(),
                                                                    "max_length": self.config.max_length})
        if (folder / "lm-valid").is_dir():
            return folder
        stores = TokenStore(self.corpus / "documents"), TokenStore(self.corpus / "paragraphs")
        split, eos, length = len(stores[0]) - self.config.valid_documents, self.tokenizer.eos_token_id, \
            self.config.max_length
        TokenStore.write(folder / "lm-train", document_chunks(*stores, 0, split, self.separator, eos, length))
        TokenStore.write(folder / "lm-valid", document_chunks(*stores, split, len(stores[0]), self.separator, eos,
                                                              length))
        return folder

    def compute_loss(self, batch):
        loss = cross_entropy(self.student_logits(batch), batch["labels"])
        return loss, {"lm_loss": loss.item()}


@register_trainer("picl")
class PICLTrainer(ExtraLMTrainer):
    config_class = PICLConfig

    def training_rows(self) -> int:
        return 2 * len(self.instances)  # an epoch: every instance once, as many LM chunks beside them

    def build_artifacts(self) -> None:
        super().build_artifacts()
        search = self.build_neighbours(self.build_retriever())
        self.instances = TokenStore(self.build_instances(search))
        if not len(self.instances):
            raise HarnessError("no PICL instance is left after filtering: lower filter_threshold or set it to null")
        summary = {**json.loads((search / "retrieval.json").read_text()), "instances": len(self.instances),
                   "mean_instance_tokens": float(self.instances.offsets[-1] / len(self.instances))}
        write_json(Path(self.config.output_dir) / "retrieval.json", summary)

    def retriever_settings(self) -> dict:
        config = self.config
        return {"retriever": config.retriever, "data": _identity(config.retriever_data), "seed": config.seed,
                **{name: getattr(config, f"retriever_{name}") for name in ("batch_size", "lr", "epochs",
                                                                            "max_tokens")}}

    def build_retriever(self) -> Path:
        config = self.config
        folder = stage_folder(config.artifacts_dir, "retriever", self.retriever_settings())
        if (folder / "final").is_dir():
            return folder / "final"
        rows = read_jsonl(Path(config.retriever_data))
        if any(not {"text", "task", "form"} <= set(row) for row in rows):
            raise HarnessError(f"every row of {config.retriever_data} needs 'text', 'task' and 'form' fields")
        return train_retriever(config.retriever, rows, folder, batch_size=config.retriever_batch_size,
                               lr=config.retriever_lr, epochs=config.retriever_epochs,
                               max_tokens=config.retriever_max_tokens, save_every=config.retriever_save_every,
                               seed=config.seed, device=self.accelerator.device, progress=config.progress)

    def training_paragraphs(self) -> int:
        documents = TokenStore(self.corpus / "documents")
        return documents[len(documents) - self.config.valid_documents][0]

    def build_neighbours(self, retriever: Path) -> Path:
        """Embed every training paragraph, then search its k nearest; `retrieval.json` marks the stage done."""
        config = self.config
        settings = {"retriever": self.retriever_settings(), "corpus": self.corpus_settings(), "k": config.k,
                    "backend": config.search_backend, "metric": config.search_metric}
        folder = stage_folder(config.artifacts_dir, "neighbours", settings)
        if (folder / "retrieval.json").is_file():
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        count = self.training_paragraphs()
        texts = (text for document in read_documents(Path(config.corpus_file)) for text in document)
        embeddings = embed_paragraphs(retriever, texts, count, folder / "embeddings.npy",
                                      batch_size=config.embed_batch_size, max_tokens=config.retriever_max_tokens,
                                      device=self.accelerator.device)
        neighbours = nearest_neighbours(embeddings, config.k, backend=config.search_backend,
                                        metric=config.search_metric, path=folder / "neighbours.npy")
        report = {"paragraphs": count, "k": config.k}
        if config.corpus_labels is not None:
            labels = json.loads(Path(config.corpus_labels).read_text())[:count]
            sizes = Counter(labels).values()  # a random other paragraph shares the task this often
            report.update(precision_at_k=precision_at_k(neighbours, labels),
                          chance=sum(n * (n - 1) for n in sizes) / (count * (count - 1)))
        write_json(folder / "retrieval.json", report)
        for name in ("embeddings.npy.done", "embeddings.npy"):  # the search is complete: embeddings not needed
            (folder / name).unlink()
        return folder

    def build_instances(self, search: Path) -> Path:
        config = self.config
        settings = {"neighbours": search.name, "max_paragraph_tokens": config.max_paragraph_tokens,
                    "max_length": config.max_length, "max_demonstrations": config.max_demonstrations,
                    "seed": config.seed, "filter": config.filter_threshold,
                    "filter_model": config.model if config.filter_threshold is not None else None}
        folder = stage_folder(config.artifacts_dir, "instances", settings)
        if folder.is_dir():
            return folder
        paragraphs = TokenStore(self.corpus / "paragraphs")
        neighbours = np.load(search / "neighbours.npy", mmap_mode="r")

        def instances():
            for index in range(len(neighbours)):
                yield build_instance(paragraphs[index], [paragraphs[int(j)] for j in neighbours[index]],
                                     self.separator, config.max_paragraph_tokens, config.max_length,
                                     config.max_demonstrations, random.Random(f"{config.seed}-{index}"))

        built = instances() if config.filter_threshold is None else self.filtered(instances(), paragraphs)
        TokenStore.write(folder, built)
        return folder

    def filtered(self, instances, paragraphs: TokenStore):
        """Instances whose demonstrations lower the mean loss of the query paragraph's tokens after its first."""
        from harness.trainers.loading import load_model

        model = load_model(self.config.model).to(self.accelerator.device).eval()
        keep, size = self.config.max_paragraph_tokens - len(self.separator), self.config.eval_batch_size
        stream = iter(instances)  # one instance per paragraph, in order; streamed, never held whole
        for start in itertools.count(0, size):
            part = list(itertools.islice(stream, size))
            if not part:
                return
            queries = [paragraphs[start + i][:keep] + self.separator for i in range(len(part))]
            with_demos = _query_losses(model, part, [len(q) for q in queries], self.tokenizer.pad_token_id)
            alone = _query_losses(model, queries, [len(q) for q in queries], self.tokenizer.pad_token_id)
            yield from (ids for ids, a, b in zip(part, with_demos, alone) if a - b < -self.config.filter_threshold)

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        state, config = self.accelerator, self.config
        picl, lm = mixed_rows(step, len(self.instances), len(self.train_examples), config.batch_size, config.seed)
        mine = ([Example([], self.instances[i]) for i in shard(picl, state.process_index, state.num_processes)]
                + [self.train_examples[i] for i in shard(lm, state.process_index, state.num_processes)])
        return [self.to_device(pad_examples(part, self.tokenizer.pad_token_id))
                for part in chunked(mine, config.micro_batch_size)]


@torch.no_grad()
def _query_losses(model, sequences: list[list[int]], query_lengths: list[int], pad_id: int) -> list[float]:
    """Mean next-token loss of each sequence's last `query_length - 1` tokens."""
    batch = pad_examples([Example([], ids) for ids in sequences], pad_id)
    logits = model(input_ids=batch["input_ids"].to(model.device),
                   attention_mask=batch["attention_mask"].to(model.device)).logits.float()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:].to(
        model.device), reduction="none")  # (B, L - 1)
    ends = [len(ids) - 1 for ids in sequences]
    return [losses[row, end - (length - 1): end].mean().item() for row, (end, length) in
            enumerate(zip(ends, query_lengths))]
