"""Finding a checkpoint (local folder or hub id) and naming its exact weights.

The identity is what generation caches are keyed on, so it must change whenever the weights change: lm-eval keys
its cache on the model name and serves one model's outputs to another (its issues #2715 and #4063). We hash the
file contents instead. Weight files can be tens of GB, so for those we hash the size and three 4 MiB windows
(start, middle, end): any training step rewrites every tensor, so the windows change with it.

`check_checkpoint` reads a folder before anything loads it, so a broken or unsafe checkpoint costs one line, not a
traceback after minutes: config.json must be a JSON object naming a known architecture, a config or tokenizer
that declares its own Python code (`auto_map`) needs `trust_remote_code`, weights must exist, a safetensors file
must hold a whole header and every tensor its header lists, and a pickled weight file (.bin/.pt) must load with
torch's safe (`weights_only`) unpickler. The architecture name is looked up in transformers' own list, which takes
seconds to import: a run that may be served from its cache checks everything else first (`architecture=False`)
and the architecture when the model loads, before any weight is read.

A soft prompt is a PEFT prompt-tuning adapter folder (`adapter_config.json`, `adapter_model.safetensors`) that
names its base model. It resolves to the base model's folder plus the adapter; its identity digests both, so two
prompts on one base never share cached answers. Checked before loading: the base must be found and checkable, and
the prompt's width must equal the base model's hidden size.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_WINDOW = 4 << 20


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROMPT_TENSOR = "prompt_embeddings"  # PEFT's name for the (virtual tokens, hidden) prompt in the adapter file


@dataclass(frozen=True)
class ModelRef:
    path: Path  # a local HF-format folder (for a soft prompt: its base model's)
    name: str  # short display name, used for the results folder
    identity: str  # hex digest of the weights, config and tokenizer (and the soft prompt's, when there is one)
    adapter: Path | None = None  # the soft prompt's folder, applied on top of the model at `path`


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as error:  # the hub library raises many types; all mean "not obtainable"
        raise HarnessError(
            f"{repo_id!r} is neither a local folder nor a model the hub could provide "
            f"({type(error).__name__}); pass the path of an HF-format checkpoint folder"
        ) from None


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        if not path.name.endswith(_WEIGHT_SUFFIXES) or size <= 3 * _WINDOW:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            for offset in (0, size // 2, size - _WINDOW):
                handle.seek(offset)
                digest.update(handle.read(_WINDOW))
    return digest.digest()


def model_identity(folder: Path) -> str:
    """Digest of every file in the checkpoint folder except logs and optimizer state."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or relative.startswith(".") or "optimizer" in relative or "/." in relative:
            continue
        if relative.endswith((".json", ".txt", ".model", ".tiktoken", *_WEIGHT_SUFFIXES)):
            digest.update(relative.encode())
            digest.update(_file_digest(path))
    return digest.hexdigest()


def display_name(model: str, folder: Path) -> str:
    """`org/name` for hub ids, the folder name for local checkpoints ("step-200" becomes "parent/step-200")."""
    if not Path(os.path.expanduser(model)).exists():
        return model.replace("/", "__")
    name = folder.resolve().name
    if name.startswith(("step", "checkpoint")):
        name = f"{folder.resolve().parent.name}__{name}"
    return name


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HarnessError(f"{path} is not valid JSON ({error}): restore it from the original checkpoint") from None
    if not isinstance(value, dict):
        raise HarnessError(f"{path} must hold a JSON object: restore it from the original checkpoint")
    return value


def check_safetensors(path: Path) -> dict:
    """The header is whole JSON and every tensor it lists lies inside the file (a truncated copy fails here);
    returns the header (tensor name -> dtype, shape, offsets)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        header = handle.read(length) if 0 < length <= min(size - 8, 100 << 20) else b""
    try:
        tensors = json.loads(header)
        end = max((info["data_offsets"][1] for name, info in tensors.items() if name != "__metadata__"), default=0)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, IndexError, AttributeError):
        raise HarnessError(f"{path} is not a safetensors file (unreadable header): re-save or re-download it") from None
    if 8 + length + end > size:
        raise HarnessError(f"{path} is truncated ({size} of {8 + length + end} bytes): re-save or re-download it")
    return tensors


def check_pickled_weights(path: Path) -> None:
    """A .bin/.pt state dict must load with torch's safe unpickler, as transformers loads it."""
    import torch

    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped
    except pickle.UnpicklingError:
        raise HarnessError(f"{path} holds pickled objects that safe loading refuses (it could run code): "
                           "convert it to safetensors from a copy you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise HarnessError(f"{path} is not a readable torch weight file ({str(error).splitlines()[0]}): "
                           "re-save or re-download it") from None


def _weight_files(folder: Path) -> list[Path]:
    """The files transformers would load: safetensors when present (sharded per its index), else pickles."""
    for kind in ("safetensors", "bin"):
        index = folder / f"{'model' if kind == 'safetensors' else 'pytorch_model'}.{kind}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [shard for shard in shards if not (folder / shard).is_file()]
            if missing:
                raise HarnessError(f"{folder} lacks {missing[0]}, listed in {index.name}: copy the whole checkpoint")
            return [folder / shard for shard in shards]
    found = sorted(folder.glob("*.safetensors"))
    return found or sorted(path for suffix in ("*.bin", "*.pt", "*.pth") for path in folder.glob(suffix)
                           if not path.name.startswith(("training_args", "optimizer", "scheduler", "rng")))


def check_checkpoint(folder: Path, trust_remote_code: bool = False, architecture: bool = True) -> None:
    """Everything about an HF-format folder that can be known without loading it (see the module docstring)."""
    if _declares_code(folder) and not trust_remote_code:
        raise HarnessError(f"{folder} declares its own Python code (auto_map), which runs only when asked: pass "
                           "--trust-remote-code to `harness eval` if you trust its source (training loads built-in "
                           "architectures only)")
    if architecture:
        check_architecture(folder)
    weights = _weight_files(folder)
    if not weights:
        raise HarnessError(f"{folder} holds no weights (*.safetensors or *.bin): pass a folder saved with "
                           "save_pretrained(), not only its config")
    for path in weights:
        if path.suffix == ".safetensors":
            check_safetensors(path)
        else:
            check_pickled_weights(path)


def _declares_code(folder: Path) -> bool:
    tokenizer_config = folder / "tokenizer_config.json"
    return "auto_map" in _read_json(folder / "config.json") or (tokenizer_config.is_file()
                                                                and "auto_map" in _read_json(tokenizer_config))


def check_architecture(folder: Path) -> None:
    """The folder's model type is one transformers knows, unless it brings its own code (this imports
    transformers: it is done when a model loads)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = _read_json(folder / "config.json").get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES and not _declares_code(folder):
        raise HarnessError(f"{folder / 'config.json'} names no architecture transformers knows (model_type "
                           f"{model_type!r}): restore it from the original checkpoint")


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def adapter_base(model: str) -> str | None:
    """The base model a soft-prompt folder names, or None when `model` is not a soft-prompt folder."""
    local = Path(os.path.expanduser(model))
    if not (local.is_dir() and is_adapter(local)):
        return None
    base = _read_json(local / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise HarnessError(f"{local / ADAPTER_CONFIG} names no base model: set base_model_name_or_path to the "
                           "checkpoint the prompt was trained on")
    return base


def _hidden_size(folder: Path) -> int | None:
    config = _read_json(folder / "config.json")
    return next((config[key] for key in ("hidden_size", "d_model", "n_embd") if isinstance(config.get(key), int)),
                None)


def check_prompt_width(adapter: Path, base_folder: Path) -> None:
    """The prompt is (virtual tokens, width) and the width must be the base model's hidden size."""
    shape = check_safetensors(adapter / ADAPTER_WEIGHTS).get(PROMPT_TENSOR, {}).get("shape")
    hidden = _hidden_size(base_folder)
    if not (isinstance(shape, list) and len(shape) == 2):
        raise HarnessError(f"{adapter / ADAPTER_WEIGHTS} holds no {PROMPT_TENSOR!r} matrix: pass a folder saved by "
                           "PEFT prompt tuning")
    if hidden is not None and shape[1] != hidden:
        raise HarnessError(f"the soft prompt in {adapter} is {shape[1]} wide but its base model {base_folder} has "
                           f"hidden size {hidden}: pair the prompt with the model it was trained on (set "
                           f"base_model_name_or_path in {ADAPTER_CONFIG})")


def check_adapter(folder: Path, trust_remote_code: bool = False, architecture: bool = True) -> None:
    """A soft-prompt folder: PEFT prompt tuning, its weights readable, its base found and matching its width."""
    peft_type = _read_json(folder / ADAPTER_CONFIG).get("peft_type")
    if peft_type != "PROMPT_TUNING":
        raise HarnessError(f"{folder} holds a {peft_type} adapter; only soft prompts (PEFT prompt tuning) are "
                           "evaluated here: merge other adapters into the model and pass the merged folder")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise HarnessError(f"{folder} lacks {ADAPTER_WEIGHTS}: pass a folder saved by PEFT's save_pretrained()")
    base = adapter_base(str(folder))
    assert base is not None
    if _looks_like_path(base) and not Path(os.path.expanduser(base)).exists():
        raise HarnessError(f"the base model {base} of the soft prompt {folder} is not found: put the checkpoint "
                           f"back there or set base_model_name_or_path in {folder / ADAPTER_CONFIG}")
    if adapter_base(base) is not None:
        raise HarnessError(f"the base model {base} of {folder} is itself an adapter: name a full checkpoint")
    base_folder = check_local(base, trust_remote_code, architecture)
    if base_folder is not None:
        check_prompt_width(folder, base_folder)


def check_local(model: str, trust_remote_code: bool = False, architecture: bool = True) -> Path | None:
    """The checkpoint folder if `model` is local, None if it is a hub id; a broken local checkpoint is an error.
    A soft-prompt folder is checked with its base model."""
    local = Path(os.path.expanduser(model))
    if local.exists():
        if local.is_dir() and is_adapter(local):
            check_adapter(local, trust_remote_code, architecture)
            return local
        if not (local / "config.json").is_file():
            raise HarnessError(f"{model} has no config.json: pass a folder saved with save_pretrained()")
        check_checkpoint(local, trust_remote_code, architecture)
        return local
    if _looks_like_path(model):
        raise HarnessError(f"no checkpoint at {model}: check the path, or pass a hub id such as gpt2")
    return None


def resolve(model: str, trust_remote_code: bool = False, architecture: bool = True) -> ModelRef:
    """A local folder is used as it is; anything else is tried as a hub id (downloaded once to the hub cache)."""
    base = adapter_base(model)
    if base is not None:
        adapter = check_local(model, trust_remote_code, architecture)
        assert adapter is not None
        ref = resolve(base, trust_remote_code, architecture)
        check_prompt_width(adapter, ref.path)  # a hub base is only known once downloaded
        identity = hashlib.sha256(f"{ref.identity} {model_identity(adapter)}".encode()).hexdigest()
        return ModelRef(path=ref.path, name=display_name(model, adapter), identity=identity, adapter=adapter)
    folder = check_local(model, trust_remote_code, architecture)
    if folder is None:
        folder = _download(model)
        check_checkpoint(folder, trust_remote_code, architecture)
    return ModelRef(path=folder, name=display_name(model, folder), identity=model_identity(folder))


def resolved(model: str | ModelRef, trust_remote_code: bool = False) -> ModelRef:
    """`model` resolved, or as it is when it was resolved already: a checkpoint is digested once per run."""
    return model if isinstance(model, ModelRef) else resolve(model, trust_remote_code)
