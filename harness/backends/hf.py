"""The transformers backend: batched generation with a KV cache, per-request seeds, and lm-eval-style scoring.

Generation runs our own decoding loop over the model's forward pass instead of `model.generate`, for three reasons:
every request draws from its own seeded generator (so a sample does not depend on its batch neighbours, which
`generate` cannot promise), `no_repeat_ngram_size` looks at each row's own tokens rather than at the padding, and
the batch is scheduled by us:
- the samples of one prompt (several seeds, avg@k, rollouts) share its forward pass: the prompt is encoded once and
  its KV-cache row is copied for each sample, which then draws its first token from the shared logits;
- continuous batching: a finished row leaves the batch and the cache at once, and when a quarter of the slots are
  free the next prompts are encoded and their rows join, left-padded to the batch's cache width (the columns that
  are padding for every row are dropped as rows leave);
- the cache keeps room at its end for the next tokens instead of concatenating (a copy of the whole cache per layer
  and step).
Since a row's tokens depend only on its own prompt, seed and logits, none of this changes a sample.

Not used: a static cache with `torch.compile` (inductor on CPU) and transformers' `generate_batch`. Compiling the
tiny teacher's decoding step took minutes on a 2-core CPU for a 2-2.5x cheaper step, which pays only after
thousands of steps; `generate_batch` draws every sample from one generator seeded once for the call, with one
generation config for all requests, stops on end-of-sequence tokens only and does not list the n-gram ban among the
logits processors it supports, so it cannot give our samples (see bench/README.md).
"""

from __future__ import annotations

import copy as copy_module
import functools
import itertools
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from harness.backends import soft_prompt
from harness.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    LoglikelihoodResult,
    NgramBan,
    SamplingSettings,
    cut_at_stop,
    encode_prompts,
    split_requests,
)
from harness.errors import HarnessError
from harness.models import ModelRef, resolved

if TYPE_CHECKING:
    from transformers import DynamicCache

# Continuous batching refills the batch once this share of its slots is free: each refill costs a forward pass of
# its own, which for small models costs about as much as a decoding step of the whole batch.
REFILL_SHARE = 0.25
# Fewer shared tokens than this are cheaper to recompute than to copy (a cache copy per batch row).
MIN_SHARED_PREFIX = 16


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        try:
            return getattr(torch, dtype)
        except AttributeError:
            raise HarnessError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32  # CPU half precision is slow and lossy; tiny models are cheap in float32


def load_model_and_tokenizer(path, device: torch.device, dtype: torch.dtype, trust_remote_code: bool,
                             model_class=None):
    """Shared with the trainers and the encoder-decoder backend: one place decides how checkpoints are opened.
    `model_class` is the transformers Auto class (default: AutoModelForCausalLM)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_class = model_class or AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = model_class.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise HarnessError(
                f"{path} needs its own Python code to load; pass --trust-remote-code if you trust its source"
            ) from None
        raise
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@dataclass
class _Row:
    """One request in flight: its prompt tokens, the tokens generated, its sampler and its n-gram ban list (which
    holds the whole sequence)."""

    index: int
    request: GenerationRequest
    tokens: list[int]
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    ban: NgramBan = field(default_factory=lambda: NgramBan([], 0))
    finish_reason: str = "length"
    text: str | None = None

    def push(self, token: int) -> None:
        self.generated.append(token)
        self.ban.push(token)


@dataclass
class _Scored:
    """One scoring request: where its result goes and the continuation tokens it scores."""

    index: int
    targets: list[int]


@dataclass
class _Batch:
    """Rows decoding together: their KV cache, left-padded to one width W, its attention mask (B, W), each row's next
    input token, and, right after the prompts' forward pass, their next-token logits (B, V). A soft prompt's prefix
    sits in the cache in front of the W columns the mask covers (`_fixed_columns`); padding goes in after it."""

    rows: list[_Row]
    cache: DynamicCache | None
    mask: torch.Tensor | None
    next_tokens: list[int]
    logits: torch.Tensor | None = None

    @staticmethod
    def empty() -> _Batch:
        return _Batch([], None, None, [])

    def select(self, index: list[int]) -> _Batch:
        """A new batch of the rows at `index` (a row repeated forks it), without rows or next tokens yet."""
        at = torch.tensor(index, device=self.mask.device)
        layers = [(layer.keys[at], layer.values[at]) for layer in self.cache.layers]
        return _Batch([], _cache(layers), self.mask[at], [], None if self.logits is None else self.logits[at])

    def keep(self, keep: list[int]) -> None:
        """Only the rows at `keep` go on; cache columns that are padding for every remaining row are dropped."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask, self.next_tokens, self.logits = [], None, None, [], None
            return
        at = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(at)
        self.mask = self.mask[at]
        self.logits = None if self.logits is None else self.logits[at]
        self.rows, self.next_tokens = [self.rows[i] for i in keep], [self.next_tokens[i] for i in keep]
        lead = int(self.mask.any(0).int().argmax())  # the first column some row attends to
        if lead:
            fixed = _fixed_columns(self)
            self.mask = self.mask[:, lead:]
            for layer in self.cache.layers:
                layer.keys, layer.values = (_drop_columns(layer.keys, fixed, lead),
                                            _drop_columns(layer.values, fixed, lead))

    @staticmethod
    def join(*batches: _Batch) -> _Batch:
        """One batch of all the rows, each cache left-padded with masked zeros to the widest."""
        live = [batch for batch in batches if batch.mask is not None]
        if len(live) <= 1:
            return live[0] if live else _Batch.empty()
        width = max(batch.mask.shape[1] for batch in live)

        def padded(tensor: torch.Tensor, batch: _Batch, dim: int) -> torch.Tensor:
            # F.pad takes (left, right) pairs from the last dimension backwards; dim is -1 (mask) or -2 (keys)
            pad = width - batch.mask.shape[1]
            fixed = 0 if dim == -1 else _fixed_columns(batch)
            if not fixed:
                return torch.nn.functional.pad(tensor, (0, 0) * (-1 - dim) + (pad, 0))
            gap = tensor.new_zeros(*tensor.shape[:2], pad, tensor.shape[-1])
            return torch.cat((tensor[:, :, :fixed], gap, tensor[:, :, fixed:]), dim=-2)

        layers = [tuple(torch.cat([padded(getattr(b.cache.layers[i], part), b, -2) for b in live])
                        for part in ("keys", "values")) for i in range(len(live[0].cache.layers))]
        logits = None if any(b.logits is None for b in live) else torch.cat([b.logits for b in live])
        return _Batch([row for b in live for row in b.rows], _cache(layers),
                      torch.cat([padded(b.mask, b, -1) for b in live]),
                      [token for b in live for token in b.next_tokens], logits)


def _fixed_columns(batch: _Batch) -> int:
    """Cache columns in front of those the mask covers: a soft prompt's prefix (0 without one)."""
    return batch.cache.layers[0].keys.shape[-2] - batch.mask.shape[1]


def _drop_columns(tensor: torch.Tensor, fixed: int, count: int) -> torch.Tensor:
    """`tensor` (B, H, T, D) without the `count` columns after its first `fixed` ones."""
    if not fixed:
        return tensor[:, :, count:]
    return torch.cat((tensor[:, :, :fixed], tensor[:, :, fixed + count:]), dim=-2)


def _cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A decoding cache holding `layers` (keys and values per layer)."""
    cache = _decoding_cache_class()()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


@functools.cache
def _decoding_cache_class() -> type:
    """transformers' DynamicCache whose layers write each step into room kept at their end (transformers' own
    layers concatenate: a copy of the whole cache per layer and step, which on a CPU cost more than the attention
    over it). The room grows by half when it runs out; after rows are dropped or columns cut, the next step copies
    the cache into new room."""
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicLayer

    class RoomyLayer(DynamicLayer):
        key_room: torch.Tensor | None = None
        value_room: torch.Tensor | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            end = length + key_states.shape[-2]
            room = self.key_room
            if room is None or self.keys.data_ptr() != room.data_ptr() or room.shape[0] != key_states.shape[0] \
                    or end > room.shape[-2]:
                shape = (*key_states.shape[:2], end + max(64, end // 2), key_states.shape[-1])
                self.key_room, self.value_room = (key_states.new_empty(shape), value_states.new_empty(shape))
                if length:
                    self.key_room[:, :, :length] = self.keys
                    self.value_room[:, :, :length] = self.values
            self.key_room[:, :, length:end] = key_states
            self.value_room[:, :, length:end] = value_states
            self.keys, self.values = self.key_room[:, :, :end], self.value_room[:, :, :end]
            return self.keys, self.values

    class DecodingCache(DynamicCache):
        def __init__(self):
            Cache.__init__(self, layer_class_to_replicate=RoomyLayer)

    return DecodingCache


@dataclass
class _Prompt:
    """One distinct prompt and the rows (samples) still waiting for it; `encoding` is its row of a prefill batch,
    set once, from which every sample forks its KV cache."""

    tokens: list[int]
    rows: list[_Row]
    encoding: tuple[_Batch, int] | None = None


def _filter_logits(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Temperature, top-k and top-p on one row of logits (V,), in float32."""
    logits = logits / settings.temperature
    if settings.top_k > 0:
        kth = torch.topk(logits, min(settings.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always survives).
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= settings.top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, -math.inf))
    return logits


def _sample(logits: torch.Tensor, generator: torch.Generator) -> int:
    """Inverse-CDF draw with the row's own generator: one uniform per step, whatever the batch holds."""
    probs = torch.softmax(logits.float(), dim=-1)
    cumulative = probs.cumsum(-1)
    uniform = torch.rand((), generator=generator).item() * cumulative[-1].item()
    return min(int(torch.searchsorted(cumulative, torch.tensor([uniform], device=cumulative.device))[0]),
               logits.numel() - 1)


class HFBackend(Backend):
    def __init__(
        self,
        model: str | ModelRef,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        max_length: int | None = None,
        trust_remote_code: bool = False,
    ):
        ref = resolved(model, trust_remote_code)
        self.name, self.identity, self.path, self.adapter = ref.name, ref.identity, ref.path, ref.adapter
        self.device = pick_device(device)
        self.model, self.tokenizer = load_model_and_tokenizer(
            ref.path, self.device, pick_dtype(dtype, self.device), trust_remote_code
        )
        self.batch_size = batch_size
        self.chunk_size = 4 * batch_size  # requests per cache commit: what an interruption can cost
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", 2048)
        self.model, self.max_length = soft_prompt.apply(ref.adapter, self.model, self.max_length)
        self.eos_token_id = self.tokenizer.eos_token_id
        self._kept_prefix: tuple[tuple[int, ...], DynamicCache | None] = ((), None)

    # ----- generation -----------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        encoded = self._encode_prompts(requests)
        # Longest prompts first, equal prompts next to each other: the samples of one prompt share its prefill.
        order = sorted(range(len(requests)), key=lambda i: (-len(encoded[i]), encoded[i]))
        rows = [self._new_row(i, requests[i], encoded[i]) for i in order]
        results: list[Completion | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="generate", unit="req", disable=not progress) as bar:
            for row in self._decode(rows):
                results[row.index] = Completion(row.text or "", len(row.generated), row.finish_reason)
                bar.update(1)
        return results  # type: ignore[return-value]

    def _encode_prompts(self, requests: Sequence[GenerationRequest]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, requests, self.max_length)

    def _new_row(self, index: int, request: GenerationRequest, tokens: list[int]) -> _Row:
        settings = request.settings
        generator = None if settings.greedy else torch.Generator().manual_seed(request.seed)
        return _Row(index, request, list(tokens), generator, ban=NgramBan(tokens, settings.no_repeat_ngram_size))

    @torch.inference_mode()
    def _decode(self, rows: list[_Row]) -> Iterator[_Row]:
        """Continuous batching over one shared KV cache: up to `batch_size` rows decode together; a finished row
        leaves the batch and the cache at once, and once a quarter of the slots are free the next prompts are
        encoded and join the batch. Yields each row as it finishes."""
        waiting = deque(_Prompt(list(tokens), list(group))
                        for tokens, group in itertools.groupby(rows, key=lambda row: tuple(row.tokens)))
        batch = _Batch.empty()
        refill = max(1, int(self.batch_size * REFILL_SHARE))
        while waiting or batch.rows:
            if waiting and (not batch.rows or self.batch_size - len(batch.rows) >= refill):
                done: list[_Row] = []
                batch = _Batch.join(batch, self._admit(waiting, self.batch_size - len(batch.rows), done))
                yield from done
            if not batch.rows:
                continue
            batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=-1)
            out = self.model(
                input_ids=torch.tensor(batch.next_tokens, device=self.device).unsqueeze(-1),
                attention_mask=batch.mask, position_ids=batch.mask.sum(-1, keepdim=True) - 1,
                past_key_values=batch.cache, use_cache=True, logits_to_keep=1,
            )
            done = []
            keep, batch.next_tokens = self._next_tokens(batch.rows, out.logits[:, -1, :].float(), done)
            batch.keep(keep)
            yield from done

    def _admit(self, waiting: deque[_Prompt], slots: int, done: list[_Row]) -> _Batch:
        """Up to `slots` rows from the front of the queue, each forked from its prompt's encoding with its first
        token chosen; rows that end on that token go to `done`. Prompts not yet encoded run in one forward pass;
        a prompt whose samples do not all fit keeps its encoding for the next refill."""
        taken: list[tuple[_Prompt, list[_Row]]] = []
        while waiting and slots > 0:
            prompt = waiting[0]
            count = min(slots, len(prompt.rows))
            taken.append((prompt, prompt.rows[:count]))
            prompt.rows, slots = prompt.rows[count:], slots - count
            if not prompt.rows:
                waiting.popleft()
        fresh = [prompt for prompt, _ in taken if prompt.encoding is None]
        if fresh:
            encoded = self._prefill([prompt.tokens for prompt in fresh])
            for position, prompt in enumerate(fresh):
                prompt.encoding = (encoded, position)
        forks: list[tuple[_Batch, list[int]]] = []  # rows to copy out of each prefill batch, in queue order
        for prompt, rows in taken:
            encoded, position = prompt.encoding  # type: ignore[misc]
            if not forks or forks[-1][0] is not encoded:
                forks.append((encoded, []))
            forks[-1][1].extend([position] * len(rows))
        joined = _Batch.join(*(encoded.select(index) for encoded, index in forks))
        joined.rows = [row for _, rows in taken for row in rows]
        keep, joined.next_tokens = self._next_tokens(joined.rows, joined.logits, done)
        joined.keep(keep)
        joined.logits = None
        return joined

    def _prefill(self, prompts: list[list[int]]) -> _Batch:
        """The prompts' KV cache, left-padded to one width, and each prompt's next-token logits (G, V)."""
        width = max(len(tokens) for tokens in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(t)) + t for t in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in prompts], device=self.device)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         past_key_values=_cache([]), use_cache=True, logits_to_keep=1)
        return _Batch([], out.past_key_values, mask, [], out.logits[:, -1, :].float())

    def _next_tokens(self, active: list[_Row], logits: torch.Tensor, done: list[_Row]) -> tuple[list[int], list[int]]:
        """Each active row's next token from its logits (B, V); rows that finish move to `done`. Returns the indices
        of the rows that go on and every row's token."""
        argmax = logits.argmax(-1).tolist()  # one device read per step serves every plain greedy row
        next_tokens = [self._choose(row, logits[i], argmax[i]) for i, row in enumerate(active)]
        keep = [i for i, (row, token) in enumerate(zip(active, next_tokens)) if not self._finished(row, token)]
        kept = set(keep)
        done += [row for i, row in enumerate(active) if i not in kept]
        return keep, next_tokens

    def _choose(self, row: _Row, logits: torch.Tensor, argmax: int) -> int:
        settings = row.request.settings
        banned = row.ban.banned()
        if settings.greedy and not banned:
            return argmax
        if banned:
            logits = logits.clone()
            logits[list(banned)] = -math.inf
        if settings.greedy:
            return int(logits.argmax())
        return _sample(_filter_logits(logits, settings), row.generator)

    def _finished(self, row: _Row, token: int) -> bool:
        """Record `token` and say whether the row stops here (eos, a stop string, or the token budget)."""
        settings = row.request.settings
        if token == self.eos_token_id:
            row.generated.append(token)
            row.finish_reason = "stop"
            row.text = self.tokenizer.decode(row.generated[:-1], skip_special_tokens=True)
            return True
        row.push(token)
        if settings.stop and self._stop_in_tail(row.generated, settings.stop):
            row.text, stopped = cut_at_stop(self.tokenizer.decode(row.generated, skip_special_tokens=True),
                                            settings.stop)
            if stopped:
                row.finish_reason = "stop"
                return True
        if len(row.generated) >= settings.max_new_tokens:
            row.text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            return True
        return False

    def _stop_in_tail(self, generated: list[int], stops: tuple[str, ...]) -> bool:
        """Whether a stop string ends in the newest tokens. Earlier steps already checked everything before, and
        a token holds at least one byte, so the last (bytes of the stop)+1 tokens cover any new occurrence;
        decoding only those keeps the check O(1) per step instead of O(length)."""
        window = max(len(stop.encode()) for stop in stops) + 1
        tail = self.tokenizer.decode(generated[-window:], skip_special_tokens=True)
        return any(stop in tail for stop in stops)

    # ----- scoring ----------------------------------------------------------------------------------------------

    def _batches(self, groups: dict[tuple[int, ...], list[_Scored]]) -> Iterator[list[tuple[tuple[int, ...], list]]]:
        """Batches of at most `batch_size` scored rows, contexts in token order so that contexts sharing a prefix
        (one seed's demonstrations) share batches, a context's rows kept together (a context with more rows than
        a batch holds is split, and then computed once per piece)."""
        pieces = [(context, members[start : start + self.batch_size])
                  for context, members in sorted(groups.items())
                  for start in range(0, len(members), self.batch_size)]
        batch: list[tuple[tuple[int, ...], list[_Scored]]] = []
        for piece in pieces:
            if batch and sum(len(members) for _, members in batch) + len(piece[1]) > self.batch_size:
                yield batch
                batch = []
            batch.append(piece)
        if batch:
            yield batch

    @torch.inference_mode()
    def _score(
        self, requests: Sequence[tuple[str, str]], progress: bool, move_whitespace: bool = True
    ) -> list[tuple[list[float], bool]]:
        """Token log-probs of every continuation, in three shared stages: the token prefix that every context of a
        batch shares (few-shot demonstrations) runs once and is kept for the next batch; each context's remaining
        tokens run on copies of its KV cache; each option's tokens run on copies of its context's cache."""
        results: list = [([], True)] * len(requests)
        self._kept_prefix = ((), None)
        groups: dict[tuple[int, ...], list[_Scored]] = {}
        for index, (context_tokens, continuation_tokens) in enumerate(
            split_requests(self.tokenizer, requests, move_whitespace, self.max_length)
        ):
            # Keep the right end when too long; the last token is only ever a target, never an input.
            sequence = (context_tokens + continuation_tokens)[-(self.max_length + 1) :]
            length = min(len(continuation_tokens), len(sequence) - 1)
            if length:
                groups.setdefault(tuple(sequence[:-length]), []).append(_Scored(index, sequence[-length:]))
        with tqdm(total=len(requests), desc="score", unit="req", disable=not progress) as bar:
            bar.update(len(requests) - sum(len(members) for members in groups.values()))
            for batch in self._batches(groups):
                members = [member for _, group in batch for member in group]
                for member, scored in zip(members, self._score_batch(batch)):
                    results[member.index] = scored
                bar.update(len(members))
        return results

    def _score_batch(self, batch: list[tuple[tuple[int, ...], list[_Scored]]]) -> list[tuple[list[float], bool]]:
        # Shapes and indices are built on the host: each value read back from a GPU would stall its queue.
        pad, device = self.tokenizer.pad_token_id, self.device
        lengths = [len(context) for context, _ in batch]
        shared, prefix_cache = self._shared_prefix([context for context, _ in batch])
        width = max(lengths)
        # Right padding needs no attention mask here: causal attention never lets a real token see the pads.
        context_ids = torch.tensor([list(c[shared:]) + [pad] * (width - len(c)) for c, _ in batch], device=device)
        # Only the contexts' last positions need logits: the LM head over every position would cost more than
        # the layers for vocabularies of 100k+ tokens.
        ends = sorted({length - 1 - shared for length in lengths})
        where = [ends.index(length - 1 - shared) for length in lengths]
        out = self.model(input_ids=context_ids, past_key_values=prefix_cache, use_cache=True,
                         logits_to_keep=torch.tensor(ends, device=device))
        last = out.logits[torch.arange(len(batch), device=device), torch.tensor(where, device=device)]  # (G, V)
        owners = [g for g, (_, group) in enumerate(batch) for _ in group]
        targets = [member.targets for _, group in batch for member in group]
        longest = max(len(t) for t in targets)
        target_ids = torch.tensor([t + [pad] * (longest - len(t)) for t in targets], device=device)  # (B, L)
        logits = last[torch.tensor(owners, device=device)].float().unsqueeze(1)  # (B, 1, V): predicts target 0
        if longest > 1:
            starts = [lengths[g] for g in owners]
            following = self._continue(out.past_key_values, owners, starts, width, target_ids[:, :-1])
            logits = torch.cat([logits, following], dim=1)
        logprobs = torch.log_softmax(logits, dim=-1)  # (B, L, V)
        picked = logprobs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)  # (B, L)
        valid = torch.tensor([[j < len(t) for j in range(longest)] for t in targets], device=device)
        greedy = ((logprobs.argmax(-1) == target_ids) | ~valid).all(-1)
        return [(row[: len(t)], bool(g)) for row, t, g in zip(picked.tolist(), targets, greedy.tolist())]

    def _shared_prefix(self, contexts: list[tuple[int, ...]]) -> tuple[int, DynamicCache | None]:
        """How many leading tokens every context of the batch shares, and their KV cache copied to every row (None
        when they share fewer than `MIN_SHARED_PREFIX`). Each context keeps at least its last token, whose logits
        predict the first option token. The last prefix computed is kept for the rest of the `_score` call, so one
        seed's demonstrations run once (never across calls: the weights may change between them)."""
        shortest = min(len(context) for context in contexts)
        shared = min(len(os.path.commonprefix(contexts)), shortest - 1)  # commonprefix compares any sequences
        if shared < MIN_SHARED_PREFIX or len(contexts) == 1:
            return 0, None
        kept_tokens, kept_cache = self._kept_prefix
        # Reuse the kept prefix when it covers most of what this batch shares (the same demonstrations).
        if not (len(kept_tokens) <= shared < 2 * len(kept_tokens) and contexts[0][: len(kept_tokens)] == kept_tokens):
            kept_tokens = contexts[0][:shared]
            out = self.model(input_ids=torch.tensor([kept_tokens], device=self.device), use_cache=True,
                             logits_to_keep=1)
            kept_cache = out.past_key_values
            self._kept_prefix = (kept_tokens, kept_cache)
        copy = copy_module.deepcopy(kept_cache)
        copy.batch_repeat_interleave(len(contexts))
        return len(kept_tokens), copy

    def _continue(self, cache, owners: list[int], starts: list[int], width: int,
                  inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, L-1, V) of the continuations' inputs, each row on a copy of its context's cache (the
        context's tokens fill the first `starts[row]` of `width` cache slots)."""
        device = self.device
        cache.reorder_cache(torch.tensor(owners, device=device))
        steps = inputs.shape[1]
        mask = torch.tensor([[1] * start + [0] * (width - start) + [1] * steps for start in starts], device=device)
        positions = torch.tensor([list(range(start, start + steps)) for start in starts], device=device)
        return self.model(input_ids=inputs, attention_mask=mask, position_ids=positions,
                          past_key_values=cache, use_cache=True).logits.float()

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: bool = True
    ) -> list[LoglikelihoodResult]:
        return [LoglikelihoodResult(sum(lps), greedy) for lps, greedy in self._score(requests, progress)]

    def token_logprobs(
        self, requests: Sequence[tuple[str, str]], progress: bool = True, move_whitespace: bool = True
    ) -> list[list[float]]:
        return [lps for lps, _ in self._score(requests, progress, move_whitespace)]

    def close(self) -> None:
        self.model = None
