"""Model backends behind one contract (see `base.py`). `load` is the public entry point."""

from __future__ import annotations

import importlib

from harness.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    LoglikelihoodResult,
    SamplingSettings,
)
from harness.errors import HarnessError
from harness.models import ModelRef, check_architecture, resolved

__all__ = [
    "Backend",
    "Completion",
    "GenerationRequest",
    "LoglikelihoodResult",
    "SamplingSettings",
    "load",
    "resolve_backend_name",
]

# Imported lazily: torch and vLLM take seconds to import, and `harness --help` must not wait for them.
_BACKENDS = {"hf": "harness.backends.hf:HFBackend", "vllm": "harness.backends.vllm:VLLMBackend"}
_SEQ2SEQ = "harness.backends.seq2seq:Seq2SeqBackend"  # chosen by the checkpoint's config, not by name


def resolve_backend_name(backend: str) -> str:
    """`auto` means vLLM when it is importable and a GPU is present, transformers otherwise."""
    if backend != "auto":
        return backend
    if importlib.util.find_spec("vllm") is None:
        return "hf"
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


def load(model: str | ModelRef, backend: str = "hf", **options) -> Backend:
    """Load `model` (a local HF-format folder, a hub id, or a checkpoint `harness.models.resolve` found) on the
    named backend ("hf", "vllm" or "auto").

    On transformers, an encoder-decoder checkpoint (T5, mT5) gets the encoder-decoder backend (`seq2seq.py`); a soft
    prompt (a PEFT prompt-tuning folder naming its base model) gets the transformers backend."""
    name = resolve_backend_name(backend)
    if name not in _BACKENDS:
        raise HarnessError(f"unknown backend {backend!r}: choose one of hf, vllm, auto")
    from harness.backends.seq2seq import is_encoder_decoder

    if isinstance(model, ModelRef):  # resolved by the runner without the architecture look-up, which a run served
        check_architecture(model.path)  # from its cache never needs: it is done here, where the model loads
    ref = resolved(model, options.get("trust_remote_code", False))
    if ref.adapter is not None:  # a soft prompt: the transformers backend applies it (soft_prompt.py)
        if backend == "vllm":
            raise HarnessError(f"{ref.adapter} is a soft prompt (PEFT prompt tuning), which vLLM cannot serve: use "
                               "--backend hf")
        if is_encoder_decoder(ref.path):
            raise HarnessError(f"{ref.adapter} is a soft prompt for the encoder-decoder model {ref.path}: soft "
                               "prompts are evaluated on decoder-only models only here")
        name = "hf"
    elif is_encoder_decoder(ref.path):
        if backend == "vllm":
            raise HarnessError(f"{ref.path} is an encoder-decoder model, which the vLLM backend does not serve "
                               "here: use --backend hf")
        name = "seq2seq"  # also for `auto`: transformers is the engine that serves it
    module_name, class_name = {**_BACKENDS, "seq2seq": _SEQ2SEQ}[name].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(ref, **options)
