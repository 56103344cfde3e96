"""A soft prompt (PEFT prompt tuning) on the transformers backend, as a prefix whose KV cache is computed once.

PEFT prepends the prompt's P embeddings to every input's embeddings (`PeftModelForCausalLM.forward`). Every request
of an evaluation shares that prefix, so its keys and values are computed once when the backend opens and each forward
pass starts from a copy of them: the backend's decoding and scoring loops run on `PromptPrefixed`, which prepends
the cached prefix to a call that has no cache yet (or an empty one), and shifts attention masks and position ids by P
for every call (a cache it returned already holds the prefix; the decoding loop keeps those P columns in front when
it pads or trims its cache). The result equals PEFT's concatenation up to float
rounding: the same positions 0..P-1 for the prompt, P.. for the text, and the prompt attended by every token.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from harness.models import ADAPTER_WEIGHTS, PROMPT_TENSOR


def read_prompt(adapter: Path) -> torch.Tensor:
    """The (P, hidden) prompt of a PEFT prompt-tuning folder."""
    from safetensors.torch import load_file

    return load_file(adapter / ADAPTER_WEIGHTS)[PROMPT_TENSOR]


class PromptPrefixed:
    """`model` called as the backend calls it, with the soft prompt in front of every sequence."""

    def __init__(self, model, prompt: torch.Tensor):
        self.model = model
        self.prefix_length = prompt.shape[0]
        embeddings = prompt.to(device=model.device, dtype=model.dtype).unsqueeze(0)  # (1, P, H)
        with torch.inference_mode():
            self.prefix = model(inputs_embeds=embeddings, use_cache=True, logits_to_keep=1).past_key_values

    def __getattr__(self, name: str):  # config, device, dtype ...: the base model's
        return getattr(self.model, name)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, past_key_values=None, **options):
        rows = input_ids.shape[0]
        if past_key_values is None:
            past_key_values = copy.deepcopy(self.prefix)
            past_key_values.batch_repeat_interleave(rows)
        elif past_key_values.get_seq_length() == 0:  # an empty cache of the caller's kind: the prefix goes in first
            for index, layer in enumerate(self.prefix.layers):
                past_key_values.update(layer.keys.repeat(rows, 1, 1, 1), layer.values.repeat(rows, 1, 1, 1), index)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(rows, self.prefix_length), attention_mask], dim=-1)
        if position_ids is not None:
            position_ids = position_ids + self.prefix_length
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, **options)


def apply(adapter: Path | None, model, max_length: int):
    """The model with the soft prompt in front (unchanged without one), and the tokens left for the text."""
    if adapter is None:
        return model, max_length
    prefixed = PromptPrefixed(model, read_prompt(adapter))
    return prefixed, max_length - prefixed.prefix_length
