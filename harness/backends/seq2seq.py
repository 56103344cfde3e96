"""The transformers backend for encoder-decoder checkpoints (T5, mT5, CPM-2-style): `load` picks it by itself when
a checkpoint's config says `is_encoder_decoder`.

The prompt goes to the encoder; the decoder starts from the model's `decoder_start_token_id`. Generation is the
decoder-only backend's loop (`hf.py`): each request samples from its own seeded generator, `no_repeat_ngram_size`
looks at the request's generated tokens (as transformers does for encoder-decoder models: the prompt is not in
the decoder's sequence), stop strings and the token budget end a row. Scoring: log P(continuation | context) is the
decoder's log-prob of the continuation's tokens followed by the end-of-sequence token, with the context as the
encoder input: T5 was trained to emit a complete answer and stop, so an option is scored as the whole output. The
context is not split at its trailing whitespace (SentencePiece drops it either way).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.backends.base import GenerationRequest, NgramBan
from harness.backends.hf import HFBackend, _Row, load_model_and_tokenizer, pick_device, pick_dtype
from harness.models import ModelRef, resolved


def is_encoder_decoder(folder: Path) -> bool:
    """Whether the checkpoint in `folder` is an encoder-decoder model, from its config.json."""
    return bool(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("is_encoder_decoder"))


def load_seq2seq(path, device: torch.device, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForSeq2SeqLM

    return load_model_and_tokenizer(path, device, dtype, trust_remote_code, AutoModelForSeq2SeqLM)


@dataclass
class _EncodedRow(_Row):
    """A request in flight whose prompt lives in the encoder: `tokens` holds only what the decoder produced."""

    prompt: list[int] = field(default_factory=list)


class Seq2SeqBackend(HFBackend):
    def __init__(self, model: str | ModelRef, device: str | None = None, dtype: str = "auto", batch_size: int = 32,
                 max_length: int | None = None, trust_remote_code: bool = False):
        ref = resolved(model, trust_remote_code)
        self.name, self.identity, self.path, self.adapter = ref.name, ref.identity, ref.path, ref.adapter
        self.device = pick_device(device)
        self.model, self.tokenizer = load_seq2seq(ref.path, self.device, pick_dtype(dtype, self.device),
                                                  trust_remote_code)
        self.batch_size = batch_size
        self.chunk_size = 4 * batch_size
        # T5's relative positions have no hard limit; 512 is what T5 and mT5 were trained on.
        self.max_length = max_length or getattr(self.model.config, "n_positions", None) or 512
        self.eos_token_id = self.tokenizer.eos_token_id
        self.start_token_id = self.model.config.decoder_start_token_id

    # ----- generation: the decoder-only loop, with the prompt in the encoder -------------------------------------

    def _encode_prompts(self, requests: Sequence[GenerationRequest]) -> list[list[int]]:
        # with the end-of-sequence token T5 expects
        encoded = self.tokenizer([request.prompt for request in requests])["input_ids"] if requests else []
        return [tokens[-min(request.settings.max_prompt_tokens or self.max_length, self.max_length) :]
                for tokens, request in zip(encoded, requests)]

    def _new_row(self, index: int, request: GenerationRequest, tokens: list[int]) -> _Row:
        generator = None if request.settings.greedy else torch.Generator().manual_seed(request.seed)
        # over the decoder's sequence, its start token included, as transformers bans
        ban = NgramBan([self.start_token_id], request.settings.no_repeat_ngram_size)
        return _EncodedRow(index, request, [], generator, ban=ban, prompt=tokens)

    def _encode_batch(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=self.device)
        return ids, mask

    def _decode(self, rows: list[_Row]) -> Iterator[_Row]:
        """Fixed batches (the encoder runs once per batch), each decoded until its last row ends."""
        for start in range(0, len(rows), self.batch_size):
            yield from self._decode_batch(rows[start : start + self.batch_size])

    @torch.inference_mode()
    def _decode_batch(self, rows: list[_Row]) -> list[_Row]:
        """Encode the prompts once, then decode step by step; finished rows leave the batch and the cache."""
        input_ids, mask = self._encode_batch([row.prompt for row in rows])  # type: ignore[attr-defined]
        encoded = self.model.get_encoder()(input_ids=input_ids, attention_mask=mask)
        active, done, cache = list(rows), [], None
        step_input = torch.full((len(rows), 1), self.start_token_id, device=self.device)
        while active:
            out = self.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=step_input,
                             past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :].float()
            keep, next_tokens = self._next_tokens(active, logits, done)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                encoded.last_hidden_state = encoded.last_hidden_state[index]
                mask, active = mask[index], [active[i] for i in keep]
                next_tokens = [next_tokens[i] for i in keep]
            step_input = torch.tensor(next_tokens, device=self.device).unsqueeze(-1)
        return done

    # ----- scoring ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _score(self, requests: Sequence[tuple[str, str]], progress: bool,
               move_whitespace: bool = True) -> list[tuple[list[float], bool]]:
        contexts = self.tokenizer([context for context, _ in requests])["input_ids"] if requests else []
        continuations = (self.tokenizer([c for _, c in requests], add_special_tokens=False)["input_ids"]
                         if requests else [])
        encoder_inputs = [ids[-self.max_length :] for ids in contexts]
        targets = [ids + [self.eos_token_id] for ids in continuations]
        # Longest first, equal contexts next to each other, so the options of a question share a batch.
        order = sorted(range(len(requests)), key=lambda i: (-len(encoder_inputs[i]), encoder_inputs[i]))
        results: list = [None] * len(requests)
        with tqdm(total=len(requests), desc="score", unit="req", disable=not progress) as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                scored = self._score_batch([encoder_inputs[i] for i in batch], [targets[i] for i in batch])
                for i, result in zip(batch, scored):
                    results[i] = result
                bar.update(len(batch))
        return results

    def _score_batch(self, inputs: list[list[int]], targets: list[list[int]]) -> list[tuple[list[float], bool]]:
        """Each distinct context goes through the encoder once; its rows share that encoding."""
        position = {ids: i for i, ids in enumerate(dict.fromkeys(tuple(ids) for ids in inputs))}
        distinct = list(position)
        owner = torch.tensor([position[tuple(ids)] for ids in inputs], device=self.device)
        input_ids, mask = self._encode_batch([list(ids) for ids in distinct])
        encoded = self.model.get_encoder()(input_ids=input_ids, attention_mask=mask)
        encoded.last_hidden_state = encoded.last_hidden_state[owner]  # (B, S, H)
        mask = mask[owner]
        longest = max(len(t) for t in targets)
        pad = self.tokenizer.pad_token_id
        target_ids = torch.tensor([t + [pad] * (longest - len(t)) for t in targets], device=self.device)  # (B, L)
        # Teacher forcing: the decoder reads the start token and the targets shifted right.
        start = torch.full((len(targets), 1), self.start_token_id, device=self.device)
        decoder_ids = torch.cat([start, target_ids[:, :-1]], dim=1)
        logits = self.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, L, V)
        picked = logprobs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)  # (B, L)
        valid = torch.tensor([[j < len(t) for j in range(longest)] for t in targets], device=self.device)
        greedy = ((logprobs.argmax(-1) == target_ids) | ~valid).all(-1)
        return [(row[: len(t)], bool(g)) for row, t, g in zip(picked.tolist(), targets, greedy.tolist())]
