"""Range checks of evaluation settings, run before any model loads.

`harness.config` checks each value's type against its annotation; this module checks what a type cannot say:
that `top_p` lies in (0, 1], that seeds are distinct, that a results name is one plain folder name. Python callers
of `evaluate` get the same checks as the CLI, since a bad value must never cost a model load or replace good
results. Each message names the flag and its allowed range.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("hf", "vllm", "auto")
EXPOSURE_AVERAGES = ("generating", "all")
_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu)(:\d+)?$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def whole(flag: str, value: Any, minimum: int = 1) -> None:
    if not _is_int(value) or value < minimum:
        raise HarnessError(f"{flag} must be a whole number >= {minimum}, not {value!r}")


def number(flag: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    inside = _is_number(value) and (value > low if low_open else value >= low) and value <= high
    if not inside:
        shown = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise HarnessError(f"{flag} must be a number in {shown}, not {value!r}")


def check_sampling(settings: Any, flag: str = "--gen-kwargs") -> None:
    """The decoding settings a task will run with, after --gen-kwargs were applied."""
    whole(f"{flag} max_new_tokens", settings.max_new_tokens)
    number(f"{flag} temperature", settings.temperature, 0.0, math.inf)
    number(f"{flag} top_p", settings.top_p, 0.0, 1.0, low_open=True)
    whole(f"{flag} top_k", settings.top_k, minimum=0)
    whole(f"{flag} no_repeat_ngram_size", settings.no_repeat_ngram_size, minimum=0)
    if settings.max_prompt_tokens is not None:
        whole(f"{flag} max_prompt_tokens", settings.max_prompt_tokens)
    if not isinstance(settings.stop, tuple) or not all(isinstance(s, str) and s for s in settings.stop):
        raise HarnessError(f"{flag} stop must be a non-empty string or a list of them, not {settings.stop!r}")


def check_result_name(name: str) -> None:
    """A results name becomes one folder under --output-dir: never a path that leads elsewhere."""
    plain = isinstance(name, str) and name not in ("", ".", "..") and not re.search(r"[/\\\x00]", name)
    if not plain:
        raise HarnessError(f"--name {name!r} must be one plain folder name (no '/', '\\', '..' or empty name)")


def check_writable_folder(path: str | Path, flag: str) -> None:
    """`path` is, or can become, a folder we may write into."""
    folder = Path(path).expanduser()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise HarnessError(f"{flag} {path} is not a folder ({probe} is a file): pass a folder path")
    try:  # trying is the only test that holds for root and for read-only mounts alike
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError:
        raise HarnessError(f"{flag} {path} is not writable ({probe}): pass a folder you may write to") from None


def check_eval_config(config: Any) -> None:
    """Every EvalConfig value whose range its type does not fix (see `harness.runner.EvalConfig`)."""
    if config.backend not in BACKENDS:
        raise HarnessError(f"--backend must be one of {', '.join(BACKENDS)}, not {config.backend!r}")
    if config.dtype not in DTYPES:
        raise HarnessError(f"--dtype must be one of {', '.join(DTYPES)}, not {config.dtype!r}")
    if config.device is not None and not _DEVICE.match(str(config.device)):
        raise HarnessError(f"--device must be cpu, cuda, cuda:N, mps or xpu, not {config.device!r}")
    whole("--batch-size", config.batch_size)
    if config.samples is not None:
        whole("--samples", config.samples)
    if config.limit is not None:
        whole("--limit", config.limit)
    if config.num_fewshot is not None:
        whole("--num-fewshot", config.num_fewshot, minimum=0)  # 0 is zero-shot
    if config.seeds is not None:
        if not config.seeds:
            raise HarnessError("--seeds must list at least one seed, e.g. --seeds 10,20,30")
        for seed in config.seeds:
            whole("--seeds", seed, minimum=0)
        if len(set(config.seeds)) < len(config.seeds):
            raise HarnessError(f"--seeds {','.join(map(str, config.seeds))} repeats a seed: each must differ")
    if config.name is not None:
        check_result_name(config.name)
    if config.protocol is not None:
        check_protocol(config.protocol)
    if config.exposure_average not in EXPOSURE_AVERAGES:
        raise HarnessError(f"--exposure-average must be one of {', '.join(EXPOSURE_AVERAGES)}, "
                           f"not {config.exposure_average!r}")
    if config.length_tokenizer is not None and not Path(config.length_tokenizer).expanduser().is_dir():
        raise HarnessError(f"--length-tokenizer {config.length_tokenizer} is not a folder: pass a local tokenizer "
                           "folder (e.g. a GPT-2 checkpoint's)")
    check_backend_options(config.backend_options)
    check_data_parallel(config.data_parallel, config.device, config.backend_options.get("tensor_parallel_size", 1))
    check_writable_folder(config.output_dir, "--output-dir")


def check_protocol(name: str) -> None:
    from harness.registry import protocols

    known = protocols()
    if name not in known:
        raise HarnessError(f"unknown --protocol {name!r}: use one of {', '.join(known)}")


def check_data_parallel(replicas: Any, device: str | None, tensor_parallel_size: int = 1) -> None:
    """One replica per GPU (per `tensor_parallel_size` GPUs), or per CPU core on a machine without GPUs."""
    whole("--data-parallel", replicas)
    if replicas == 1:
        return
    from harness.replicas import available_devices

    kind, groups = available_devices(device, tensor_parallel_size)
    if replicas > len(groups):
        what = "CPU cores" if kind == "cpu" else f"groups of {tensor_parallel_size} GPU(s)"
        raise HarnessError(f"--data-parallel {replicas} needs one of the {len(groups)} {what} here per replica: "
                           f"pass --data-parallel {len(groups)} or less")


def check_backend_options(options: dict[str, Any]) -> None:
    for key in ("tensor_parallel_size", "max_model_len"):
        if key in options:
            whole(f"--{key.replace('_', '-')}", options[key])
    if "gpu_memory_utilization" in options:
        number("--gpu-memory-utilization", options["gpu_memory_utilization"], 0.0, 1.0, low_open=True)
    if "enforce_eager" in options and not isinstance(options["enforce_eager"], bool):
        raise HarnessError(f"--enforce-eager must be true or false, not {options['enforce_eager']!r}")
