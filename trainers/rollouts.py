"""The rollout sampler every on-policy trainer shares (MiniLLM, GRPO, TRAPO): who samples, and from what.

Responses come from the shared torch loop on the trainer's own models (`sampling.sample`, torch's global RNG,
which the checkpoint saves) or from vLLM engines in the trainer's process (`engine_sampling.EngineSampler`,
weights pushed before sampling whenever an optimizer step changed them, draws from a seeded generator that is
saved with the method state). A request may ask for n samples of one prompt, and may force a prefix: the
response then starts with the given tokens and the policy continues after them (TRAPO's expert guidance).
A prefix that ends with eos is the whole response; nothing is sampled after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from harness.backends.base import SamplingSettings
from harness.errors import HarnessError
from harness.trainers.data import left_pad
from harness.trainers.engine_sampling import EngineSampler
from harness.trainers.sampling import Rollout, pack_rollout, sample

BACKENDS = ("torch", "vllm", "auto")


class RolloutSampler:
    """Samples responses for one training process; `engines` is None on the torch path.

    `settings` gives max_new_tokens, temperature and top_p (top_k, stop strings and the prompt cut are not used:
    prompts arrive as token ids already cut). With a `mixer` model (MiniLLM's teacher) tokens can be drawn from
    (1 - alpha) policy + alpha mixer.
    """

    def __init__(self, settings: SamplingSettings, *, backend: str, model: str, mixer: str | None, vocab_size: int,
                 max_model_len: int, seed: int, process_index: int, device: torch.device, eos_id: int, pad_id: int,
                 gpu_memory_utilization: float = 0.25,
                 autocast: Callable[[], AbstractContextManager] = nullcontext):
        from harness.backends import resolve_backend_name

        if backend not in BACKENDS:
            raise HarnessError(f"rollout_backend={backend!r}: choose torch, vllm or auto")
        self.settings, self.vocab_size, self.device = settings, vocab_size, device
        self.eos_id, self.pad_id, self.autocast = eos_id, pad_id, autocast
        self.engines: EngineSampler | None = None
        if resolve_backend_name(backend) == "vllm":
            if mixer is not None and settings.top_p < 1:
                raise HarnessError("rollout_backend=vllm mixes the teacher in only with top_p=1: use torch")
            if not 0 < settings.temperature <= 2:
                raise HarnessError(f"vLLM samples at temperatures up to 2, not {settings.temperature}: use torch")
            options = {"gpu_memory_utilization": gpu_memory_utilization} if torch.cuda.is_available() else {}
            self.engines = EngineSampler(model, mixer, vocab_size, max_model_len, seed, device=device, **options)
        # each process samples its own prompts with its own engines: independent draws per process
        self.generator = torch.Generator().manual_seed(seed + process_index)

    def sample(self, policy, version: object, prompts: Sequence[Sequence[int]], *, n: int = 1, mixer=None,
               mix_alpha: float = 0.0) -> Rollout:
        """`n` responses to each prompt (rows prompt-major: the n samples of a prompt are adjacent).

        `version` names the policy's weights (the optimizer step): engines receive them only when it changed.
        """
        requests = [list(prompt) for prompt in prompts for _ in range(n)]
        if self.engines is not None:
            self.engines.load_weights(policy, version)
            settings = self.settings
            return self.engines.sample(requests, generator=self.generator, eos_id=self.eos_id, pad_id=self.pad_id,
                                       max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                       top_p=settings.top_p, mix_alpha=mix_alpha)
        ids, mask = left_pad(requests, self.pad_id)
        with self.autocast():
            return sample(policy, ids.to(self.device), mask.to(self.device), eos_id=self.eos_id, pad_id=self.pad_id,
                          vocab_size=self.vocab_size, max_new_tokens=self.settings.max_new_tokens,
                          temperature=self.settings.temperature, top_p=self.settings.top_p,
                          mixer=mixer if mix_alpha > 0 else None, mix_alpha=mix_alpha)

    def continue_prefixes(self, policy, version: object, prompts: Sequence[Sequence[int]],
                          prefixes: Sequence[Sequence[int]]) -> tuple[Rollout, torch.Tensor]:
        """One response per prompt that starts with its forced prefix (possibly empty) and continues by sampling.

        Returns the rollout (responses = prefix + continuation, at most max_new_tokens) and a (B, T) mask of the
        forced tokens.
        """
        limit = self.settings.max_new_tokens
        prefixes = [list(prefix)[:limit] for prefix in prefixes]
        open_rows = [row for row, prefix in enumerate(prefixes)
                     if len(prefix) < limit and not (prefix and prefix[-1] == self.eos_id)]
        continuations: dict[int, list[int]] = {}
        if open_rows:
            drawn = self.sample(policy, version, [list(prompts[row]) + prefixes[row] for row in open_rows])
            for row, ids, mask in zip(open_rows, drawn.response_ids, drawn.response_mask, strict=True):
                continuations[row] = ids[mask.bool()].tolist()
        responses = [(prefix + continuations.get(row, []))[:limit] for row, prefix in enumerate(prefixes)]
        rollout = pack_rollout([list(prompt) for prompt in prompts], responses, self.pad_id)
        forced = torch.zeros_like(rollout.response_mask)
        for row, prefix in enumerate(prefixes):
            forced[row, : len(prefix)] = 1
        return rollout, forced

    def state(self) -> dict:
        return {"engine_generator": self.generator.get_state()}

    def load_state(self, state: dict) -> None:
        if "engine_generator" in state:  # absent from checkpoints written before vLLM rollouts existed
            self.generator.set_state(state["engine_generator"])

    def close(self) -> None:
        if self.engines is not None:
            self.engines.close()
