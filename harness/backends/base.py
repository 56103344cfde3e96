"""The backend contract: what every model engine (transformers, vLLM) offers to tasks and trainers.

Three batched calls over small request objects, in the spirit of lm-evaluation-harness: generation, the
log-likelihood of a continuation, and the per-token log-probs of a continuation. A backend is free to reorder
and batch the requests however it likes, but must return results in request order, and a seeded sample must not
depend on which other requests share its batch.
"""

from __future__ import annotations

import dataclasses
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError


@dataclass(frozen=True)
class SamplingSettings:
    """How to decode. temperature 0 means greedy; top_k 0 and top_p 1 switch those filters off."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = ()
    max_prompt_tokens: int | None = None  # at most N prompt tokens
    truncation_side: str = "left"  # cut long prompts on the left (keep the end) or "right" (keep the start)

    def __post_init__(self) -> None:
        if self.truncation_side not in ("left", "right"):
            raise HarnessError(f"truncation_side={self.truncation_side!r}: choose left or right")

    def replace(self, **changes) -> SamplingSettings:
        return dataclasses.replace(self, **changes)

    def truncate(self, ids: list[int], max_length: int) -> list[int]:
        """Prompt ids cut to `max_prompt_tokens` on `truncation_side` and to leave room for the new tokens in
        `max_length`."""
        limit = prompt_token_limit(self, max_length)
        return ids[:limit] if self.truncation_side == "right" else ids[-limit:]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class NgramBan:
    """transformers' `no_repeat_ngram_size` rule over one sequence (prompt and response alike): a token that would
    complete an n-gram already in the sequence is banned; n = 0 bans nothing."""

    def __init__(self, tokens: Sequence[int], n: int):
        self.n, self.tokens = n, list(tokens)
        self.seen: dict[tuple[int, ...], set[int]] = {}
        for start in range(len(self.tokens) - n + 1) if n > 0 else ():
            self._add(self.tokens[start : start + n])

    def _add(self, gram: list[int]) -> None:
        self.seen.setdefault(tuple(gram[:-1]), set()).add(gram[-1])

    def banned(self) -> set[int]:
        if self.n <= 0 or len(self.tokens) < self.n - 1:
            return set()
        return self.seen.get(tuple(self.tokens[len(self.tokens) - self.n + 1 :]), set())

    def push(self, token: int) -> None:
        self.tokens.append(token)
        if self.n > 0 and len(self.tokens) >= self.n:
            self._add(self.tokens[-self.n :])


@dataclass(frozen=True)
class GenerationRequest:
    """One completion of `prompt`. With sampling, `seed` alone decides the random draws of this request."""

    prompt: str
    settings: SamplingSettings = SamplingSettings()
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str  # decoded without special tokens, cut before the first stop string, stripped of nothing
    num_tokens: int  # generated tokens, counting the end-of-sequence token when one was produced
    finish_reason: str  # "stop" (eos or stop string) or "length"


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float  # sum of log-probs of the continuation tokens given the context
    is_greedy: bool  # every continuation token was the argmax at its position


_TOKEN_CHARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keep_tail(text: str, max_tokens: int, tokenizer: Any, side: str = "left") -> str:
    """The end of `text` that still holds its last `max_tokens` tokens (with `side="right"`, the start that holds
    its first ones), cut before tokenising so that memory stays bounded whatever a data file holds (a 50 MB prompt
    drove a fast tokenizer to 10 GB). No token spans more characters than the longest vocabulary entry, so twice
    `max_tokens` such spans leave those tokens as the whole text would give them; only text the model could never
    see is dropped."""
    if tokenizer not in _TOKEN_CHARS:
        _TOKEN_CHARS[tokenizer] = max(len(token) for token in tokenizer.get_vocab())
    budget = 2 * max(max_tokens, 1) * _TOKEN_CHARS[tokenizer] + 64
    if len(text) <= budget:
        return text
    return text[:budget] if side == "right" else text[-budget:]


def prompt_token_limit(settings: SamplingSettings, context_length: int) -> int:
    """Prompt tokens kept: `max_prompt_tokens`, and room left for the new tokens in the context (at least one)."""
    room = context_length - settings.max_new_tokens
    limit = min(settings.max_prompt_tokens, room) if settings.max_prompt_tokens else room
    return max(limit, 1)


def encode_prompts(tokenizer: Any, requests: Sequence[GenerationRequest], context_length: int,
                   add_special_tokens: bool = True) -> list[list[int]]:
    """Each request's prompt ids as the model sees them (`SamplingSettings.truncate`), the text first cut to a
    bounded size (`keep_tail`); one tokenizer call for the list."""
    texts = [keep_tail(r.prompt, prompt_token_limit(r.settings, context_length), tokenizer, r.settings.truncation_side)
             for r in requests]
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"] if texts else []
    return [r.settings.truncate(ids, context_length) for ids, r in zip(encoded, requests, strict=True)]


def split_requests(
    tokenizer: Any, requests: Sequence[tuple[str, str]], move_whitespace: bool = True,
    max_tokens: int | None = None,
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per request, split as lm-eval does: trailing context whitespace belongs to
    the continuation, the continuation's tokens are what encoding the whole string adds after the context's, an
    empty context becomes the end-of-text token, and no special tokens are added. Where a token of the whole
    string spans the boundary, the continuation is encoded on its own instead. One tokenizer call per list
    (one encoding per distinct context): per-string calls cost as much as a tiny model's forward pass.
    `move_whitespace=False` keeps the context whole: the teacher-forced loss of a response given its prompt must not
    charge the response for the prompt's final newline, a token the model was never trained to predict.
    With `max_tokens` (the model's context length), contexts are first cut with `keep_tail`."""
    moved = []
    for context, continuation in requests:
        context = keep_tail(context, max_tokens, tokenizer) if max_tokens else context
        spaces = len(context) - len(context.rstrip()) if move_whitespace else 0
        moved.append((context[:-spaces], context[-spaces:] + continuation) if spaces else (context, continuation))

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    contexts = sorted({context for context, _ in moved if context})
    context_ids = dict(zip(contexts, encode(contexts)))
    wholes = encode([context + continuation for context, continuation in moved])
    split = []
    for (context, continuation), whole in zip(moved, wholes):
        if not context:
            split.append(([tokenizer.eos_token_id], whole))
        elif whole[: len(context_ids[context])] == context_ids[context]:
            split.append((context_ids[context], whole[len(context_ids[context]) :]))
        else:  # a token spans the boundary; lm-eval would score a cut-off (often empty) continuation here
            split.append((context_ids[context], encode([continuation])[0]))
    return split


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` before the earliest stop string, and whether one was found."""
    cut = min((index for index in (text.find(s) for s in stop if s) if index >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Backend(ABC):
    """A loaded model. `identity` names the exact weights: generation caches are keyed on it."""

    name: str
    identity: str

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        """One completion per request, in request order."""

    @abstractmethod
    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: bool = True
    ) -> list[LoglikelihoodResult]:
        """log P(continuation | context) for each (context, continuation), split as lm-eval does:
        trailing whitespace of the context moves to the continuation, the continuation's tokens are those of
        encode(context + continuation) after the tokens of encode(context), and an empty context is replaced by
        the end-of-text token."""

    @abstractmethod
    def token_logprobs(
        self, requests: Sequence[tuple[str, str]], progress: bool = True, move_whitespace: bool = True
    ) -> list[list[float]]:
        """The log-prob of each continuation token, split as in `loglikelihood` (see `split_requests` for
        `move_whitespace=False`)."""

    def chat_prompt(self, text: str | list[dict[str, str]]) -> str:
        """`text` as one user turn (or a list of turns, e.g. system then user) in the checkpoint's chat template,
        ending where the assistant's reply begins."""
        tokenizer = self.tokenizer  # every backend keeps its checkpoint's transformers tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise HarnessError(f"{self.name} has no chat template: drop --chat-template, or pick a --protocol that "
                               "sends plain prompts")
        messages = [{"role": "user", "content": text}] if isinstance(text, str) else text
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def close(self) -> None:
        """Release the engine. Backends hold GPU memory or worker processes; closing twice is harmless."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
