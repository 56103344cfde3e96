"""PICL's retrieval stages: the paragraph store, the task-semantics retriever, and the nearest-neighbour search.

- Corpus: one document per line of a text file (paragraphs separated by a placeholder, `<@x(x!>` as in the released
  data) or the `text` field of a JSONL file (paragraphs separated by blank lines). Paragraphs are tokenised once
  into a memory-mapped `TokenStore`, so a large corpus never sits in memory.
- Retriever (Sec. 2.1 of PICL): one shared HF encoder for queries and contexts, CLS pooling (the encoder's pooler
  output where it has one, as the released code takes `outputs[1]`), dot-product score, in-batch contrastive loss.
  Per query the batch holds 1 positive of the same task, 1 easy negative of another task and 4 hard negatives in
  the query's surface form but of another task; every context in the batch sharing the query's task counts as a
  positive (the released code's `pos_ctx_indices_mask`). Training rows are labelled rendered tasks, one JSONL row
  each: `{"text": ..., "task": ..., "form": ...}`, where `task` names the task and its template (two rows are
  positives of each other when their `task` is equal) and `form` the template alone (hard negatives share it).
  The released code draws its negatives once into the data file; here they are drawn per step from (seed, step).
- Search: every paragraph embedded, its k nearest paragraphs found by one function over faiss-cpu (exact L2, the
  released `METRIC_TYPE="L2"`, or inner product) or an exact torch top-k; embedding and search write their
  results in chunks with a progress count, so a killed run goes on where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import defaultdict, deque
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.store import atomic_write
from harness.trainers.data import Example, pad_examples

PLACEHOLDER = "<@x(x!>"
RETRIEVER_NEGATIVES = (1, 4)  # easy, hard negatives per query (the spec's 1 positive, 1 easy, 4 hard)


# ---- the corpus --------------------------------------------------------------------------------------------
def read_documents(path: Path) -> Iterator[list[str]]:
    """The paragraphs of every document, streamed line by line."""
    if not path.is_file():
        raise HarnessError(f"no corpus at {path}: set corpus_file to a .txt or .jsonl file")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise HarnessError(f"{path} line {number}: expected a JSON object with a 'text' field") from None
                paragraphs = str(text).split("\n\n")
            else:
                paragraphs = line.rstrip("\n").split(PLACEHOLDER)
            yield [p.strip() for p in paragraphs if p.strip()]


class TokenStore:
    """Token sequences in one memory-mapped file (`tokens.bin`, int32) with their offsets (`offsets.bin`)."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        self.tokens = np.memmap(folder / "tokens.bin", dtype=np.int32, mode="r") \
            if (folder / "tokens.bin").stat().st_size else np.zeros(0, dtype=np.int32)
        self.offsets = np.fromfile(folder / "offsets.bin", dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> list[int]:
        return self.tokens[self.offsets[index]: self.offsets[index + 1]].tolist()

    @staticmethod
    def write(folder: Path, sequences: Iterator[list[int]]) -> None:
        """Stream `sequences` into a store at `folder` (written to a temporary folder, then renamed)."""
        staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        offsets = [0]
        with (staging / "tokens.bin").open("wb") as handle:
            for ids in sequences:
                handle.write(np.asarray(ids, dtype=np.int32).tobytes())
                offsets.append(offsets[-1] + len(ids))
        np.asarray(offsets, dtype=np.int64).tofile(staging / "offsets.bin")
        if folder.is_dir():  # written by an earlier run that stopped before its stage was complete: the same
            shutil.rmtree(staging)
        else:
            os.replace(staging, folder)


# ---- the retriever's loss and batches ----------------------------------------------------------------------
def contrastive_loss(queries: torch.Tensor, contexts: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """In-batch contrastive loss: mean over queries of -(1/|P_i|) sum_{j in P_i} log softmax_j(q_i . c_j).

    queries: (B, D); contexts: (C, D); positives: (B, C), 1 where context j shares query i's task (|P_i| >= 1).
    """
    log_probs = F.log_softmax(queries @ contexts.T, dim=-1)  # (B, C)
    positives = positives.to(log_probs.dtype)
    return (-(log_probs * positives).sum(-1) / positives.sum(-1)).mean()


class RetrieverData:
    """Labelled rows with, per query, one positive, easy and hard negatives drawn from a seeded generator."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.by_task: dict[str, list[int]] = defaultdict(list)
        self.by_form: dict[str, list[int]] = defaultdict(list)
        for index, row in enumerate(rows):
            self.by_task[row["task"]].append(index)
            self.by_form[row["form"]].append(index)
        if len(self.by_task) < 2 or any(len(found) < 2 for found in self.by_task.values()):
            raise HarnessError("retriever data needs at least two tasks with at least two rows each")

    def _other_task(self, pool: list[int], task: str, rng: random.Random) -> int:
        for _ in range(100):
            index = rng.choice(pool)
            if self.rows[index]["task"] != task:
                return index
        return self._other_task(range(len(self.rows)), task, rng)  # the form holds one task only: an easy one

    def group(self, query: int, rng: random.Random) -> list[int]:
        """[positive, easy negatives..., hard negatives...] for row `query`."""
        task, form = self.rows[query]["task"], self.rows[query]["form"]
        positive = rng.choice([i for i in self.by_task[task] if i != query])
        easy, hard = RETRIEVER_NEGATIVES
        return ([positive] + [self._other_task(range(len(self.rows)), task, rng) for _ in range(easy)]
                + [self._other_task(self.by_form[form], task, rng) for _ in range(hard)])


def encode_texts(tokenizer, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """Padded encoder inputs, each starting with the tokenizer's CLS token (added when its template does not)."""
    cls = tokenizer.cls_token_id
    encoded = [ids if cls is None or (ids and ids[0] == cls) else [cls, *ids][:max_tokens] for ids in
               tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = pad_examples([Example(ids, []) for ids in encoded], pad)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def embed(encoder, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, D) CLS representations: the pooler output where the encoder has one, else the first hidden state."""
    out = encoder(**{name: tensor.to(encoder.device) for name, tensor in inputs.items()})
    pooled = getattr(out, "pooler_output", None)
    return (pooled if pooled is not None else out.last_hidden_state[:, 0]).float()


# ---- training the retriever, resumably ---------------------------------------------------------------------
def train_retriever(source: str, rows: list[dict], folder: Path, *, batch_size: int, lr: float, epochs: int,
                    max_tokens: int, save_every: int, seed: int, device, progress: bool = True) -> Path:
    """Train the encoder `source` on `rows`; checkpoints `folder/step-N` (atomic), the result `folder/final`.

    A rerun resumes from the last complete checkpoint: batch order and negatives are functions of (seed, step).
    """
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    from harness.trainers.data import batch_indices
    from harness.trainers.loading import _from_pretrained

    final = folder / "final"
    if final.is_dir():
        return final
    data = RetrieverData(rows)
    total = epochs * max(1, len(rows) // batch_size)
    done = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("step-*") if (p / "state.pt").is_file())
    start, resume_from = done[-1] if done else (0, None)
    encoder = _from_pretrained(AutoModel, str(resume_from or source)).to(device)
    tokenizer = _from_pretrained(AutoTokenizer, source)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr)
    if resume_from is not None:
        optimizer.load_state_dict(torch.load(resume_from / "state.pt", weights_only=True)["optimizer"])
    encoder.train()
    for step in tqdm(range(start + 1, total + 1), initial=start, total=total, desc="picl retriever",
                     disable=not progress):
        rng = random.Random(seed * 1_000_003 + step)
        torch.manual_seed(seed * 1_000_003 + step)  # dropout
        queries = batch_indices(len(rows), batch_size, step - 1, seed)
        contexts = [i for query in queries for i in data.group(query, rng)]
        q = embed(encoder, encode_texts(tokenizer, [rows[i]["text"] for i in queries], max_tokens))
        c = embed(encoder, encode_texts(tokenizer, [rows[i]["text"] for i in contexts], max_tokens))
        positives = torch.tensor([[rows[j]["task"] == rows[i]["task"] for j in contexts] for i in queries])
        loss = contrastive_loss(q, c, positives.to(q.device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % save_every == 0 or step == total:
            _save_retriever(encoder, tokenizer, optimizer, folder, step, final=step == total)
    return final


def _save_retriever(encoder, tokenizer, optimizer, folder: Path, step: int, final: bool) -> None:
    staging = folder / f".tmp-step-{step}"
    shutil.rmtree(staging, ignore_errors=True)
    encoder.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if not final:
        torch.save({"optimizer": optimizer.state_dict(), "step": step}, staging / "state.pt")
    os.replace(staging, folder / ("final" if final else f"step-{step}"))
    for old in folder.glob("step-*"):  # only the newest checkpoint is needed to resume
        if old.name != f"step-{step}":
            shutil.rmtree(old, ignore_errors=True)


# ---- embedding and search ----------------------------------------------------------------------------------
def _resumable_rows(folder: Path, name: str, shape: tuple[int, int], dtype, fill) -> None:
    """Fill the memmap `folder/name` (rows of `shape`) in chunks; `fill(start) -> rows` gives the next chunk.
    `name.done` counts the rows written, so a rerun starts at the first missing one."""
    path, count_file = folder / name, folder / f"{name}.done"
    done = int(count_file.read_text()) if count_file.is_file() and path.is_file() else 0
    array = np.lib.format.open_memmap(path, mode="r+" if done else "w+", dtype=dtype, shape=shape)
    while done < shape[0]:
        chunk = fill(done)
        array[done: done + len(chunk)] = chunk
        array.flush()
        done += len(chunk)
        atomic_write(count_file, str(done))
    del array


@torch.no_grad()
def embed_paragraphs(encoder_folder: Path, paragraphs: Iterator[str], count: int, path: Path, *, batch_size: int,
                     max_tokens: int, device) -> np.ndarray:
    """(count, D) float32 embeddings of the first `count` of `paragraphs`, written to `path` (.npy) in batches;
    a rerun skips the rows already written."""
    from transformers import AutoModel, AutoTokenizer

    encoder = AutoModel.from_pretrained(encoder_folder).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(encoder_folder)
    width = encoder.config.hidden_size
    texts = iter(paragraphs)
    skipped = False

    def fill(start: int) -> np.ndarray:
        nonlocal skipped
        if not skipped:  # a resumed run: move past the paragraphs embedded before
            deque(islice(texts, start), maxlen=0)
            skipped = True
        batch = list(islice(texts, min(batch_size, count - start)))
        return embed(encoder, encode_texts(tokenizer, batch, max_tokens)).cpu().numpy()

    _resumable_rows(path.parent, path.name, (count, width), np.float32, fill)
    return np.load(path, mmap_mode="r")


def nearest_neighbours(embeddings: np.ndarray, k: int, *, backend: str = "faiss", metric: str = "l2",
                       batch_size: int = 1024, path: Path | None = None) -> np.ndarray:
    """(N, k) indices of each row's k nearest other rows, nearest first (the row itself left out).

    backend: "faiss" (an exact flat index of faiss-cpu) or "torch" (an exact top-k by matrix product, for small
    corpora). metric: "l2" (smallest squared distance, the released search) or "ip" (largest dot product, the
    retriever's training score). With `path`, results go to that .npy file in batches, resumably.
    """
    if backend not in ("faiss", "torch") or metric not in ("l2", "ip"):
        raise HarnessError(f"search backend={backend!r}, metric={metric!r}: choose faiss or torch, l2 or ip")
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    count = len(vectors)
    if count <= k:
        raise HarnessError(f"{count} paragraphs cannot each have {k} neighbours: lower picl_k or add text")
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatL2(vectors.shape[1]) if metric == "l2" else faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        search = lambda queries: index.search(queries, k + 1)[1]  # noqa: E731
    else:
        table = torch.from_numpy(vectors)
        squared = (table * table).sum(-1)

        def search(queries: np.ndarray) -> np.ndarray:
            q = torch.from_numpy(queries)
            score = q @ table.T
            if metric == "l2":  # -|q - c|^2 up to the query's own norm, which does not change the order
                score = 2 * score - squared[None, :]
            return score.topk(k + 1, dim=-1).indices.numpy()

    def fill(start: int) -> np.ndarray:
        found = search(vectors[start: start + batch_size])
        rows = np.arange(start, start + len(found))[:, None]
        keep = found != rows  # drop the row itself (or, on ties, the last hit)
        keep[keep.sum(1) > k, -1] = False
        return found[keep].reshape(len(found), k)

    if path is None:
        return np.concatenate([fill(start) for start in range(0, count, batch_size)])
    _resumable_rows(path.parent, path.name, (count, k), np.int64, fill)
    return np.load(path, mmap_mode="r")


def precision_at_k(neighbours: np.ndarray, labels: list[str]) -> float:
    """Share of retrieved neighbours whose label equals their query's (labels known only for synthetic data)."""
    labels_array = np.asarray(labels)
    return float((labels_array[np.asarray(neighbours)] == labels_array[:, None]).mean())
