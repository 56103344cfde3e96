"""Loading models and tokenizers, and building the optimizer's parameter groups and learning-rate schedule."""

from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.models import adapter_base, check_local


def _from_pretrained(loader, path: str, **options):
    """`loader.from_pretrained(path)`, with a missing checkpoint or an unreachable hub id as a one-line error."""
    if not path:
        raise HarnessError("no model given: set model=<checkpoint folder or hub id>")
    check_local(path)  # a local path that is missing or not a checkpoint
    if adapter_base(path) is not None:
        raise HarnessError(f"{path} is a soft prompt, not a model: train from its base model "
                           f"({adapter_base(path)}) and pass the prompt as prompt_init (PPT)")
    try:
        return loader.from_pretrained(path, **options)
    except (OSError, ValueError) as error:  # missing files, an unknown architecture, custom code
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise HarnessError(f"cannot load {path!r}: {reason}") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, path)
    if tokenizer.eos_token_id is None:
        raise HarnessError(f"the tokenizer of {path} has no eos token: set eos_token in its tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, path, dtype=dtype)


def decay_groups(model, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def make_schedule(config, optimizer, total_steps: int):
    import transformers

    warmup = min(config.warmup_steps, total_steps)
    if config.schedule == "constant":
        return transformers.get_constant_schedule_with_warmup(optimizer, warmup)
    if config.schedule == "linear":
        return transformers.get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return transformers.get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, warmup, total_steps, min_lr=config.min_lr
    )
