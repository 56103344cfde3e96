"""Finding a checkpoint (local folder or hub id) and naming its exact weights.

The identity is what generation caches are keyed on, so it must change whenever the weights change: lm-eval keys
its cache on the model name and serves one model's outputs to another (its issues #2715 and #4063). We hash the
file contents instead. Weight files can be tens of GB, so for those we hash the size and three 4 MiB windows
(start, middle, end): any training step rewrites every tensor, so the windows change with it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_WINDOW = 4 << 20


@dataclass(frozen=True)
class ModelRef:
    path: Path  # a local HF-format folder
    name: str  # short display name, used for the results folder
    identity: str  # hex digest of the weights, config and tokenizer


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


def check_local(model: str) -> Path | None:
    """The checkpoint folder if `model` is local, None if it is a hub id; a broken local path is an error."""
    local = Path(os.path.expanduser(model))
    if local.exists():
        if not (local / "config.json").is_file():
            raise HarnessError(f"{model} has no config.json: pass a folder saved with save_pretrained()")
        return local
    if _looks_like_path(model):
        raise HarnessError(f"no checkpoint at {model}: check the path, or pass a hub id such as gpt2")
    return None


def resolve(model: str) -> ModelRef:
    """A local folder is used as it is; anything else is tried as a hub id (downloaded once to the hub cache)."""
    folder = check_local(model) or _download(model)
    return ModelRef(path=folder, name=display_name(model, folder), identity=model_identity(folder))
