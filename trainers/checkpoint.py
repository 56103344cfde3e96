"""Checkpoint folders: `<output>/step-<N>/` in HF format (safetensors) plus everything needed to resume exactly.

A checkpoint is written to `.tmp-step-<N>` and renamed only once complete, with `trainer_state.json` as the last
file written, so a run killed at any moment leaves either a whole checkpoint or none. Optimizer, scheduler, RNG
and model state go through `Accelerator.save_state` into `training_state/` so DDP, DeepSpeed and FSDP runs all
resume the same way; this duplicates the weights on disk, the price of one code path for every launcher.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

from harness.errors import HarnessError

_STEP = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
TRAINING_STATE = "training_state"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Finished `step-N` folders, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _STEP.match(p.name))]
    return [path for _, path in sorted(found) if (path / STATE_FILE).is_file()]


def checkpoint_step(path: Path) -> int:
    return json.loads((path / STATE_FILE).read_text())["step"]


def temporary_folder(output_dir: Path, step: int) -> Path:
    return output_dir / f".tmp-step-{step}"


def remove_partial(output_dir: Path) -> None:
    """Drop folders of checkpoints whose writing was interrupted."""
    for path in output_dir.glob(".tmp-step-*"):
        shutil.rmtree(path, ignore_errors=True)


def finish(temporary: Path, step: int, record: dict) -> Path:
    """Mark `temporary` complete and move it to its final name (a rename: atomic on one file system)."""
    (temporary / STATE_FILE).write_text(json.dumps({"step": step, **record}, indent=1))
    final = temporary.parent / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    return final


def truncate_log(log_path: Path, last_step: int) -> None:
    """Forget log lines of steps after the checkpoint we resume from: they will be trained again."""
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines() if json.loads(line).get("step", 0) <= last_step]
    log_path.write_text("".join(line + "\n" for line in kept))


def best_checkpoint(output_dir: Path, metric: str = "valid_loss", lower_is_better: bool = True) -> Path:
    """The complete checkpoint whose step logged the best `metric` (e.g. the SFT student to distil from)."""
    output_dir = Path(output_dir)
    scores = {}
    for line in (output_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if metric in record and math.isfinite(record[metric]):
            scores[record["step"]] = record[metric] if lower_is_better else -record[metric]
    candidates = [(scores[checkpoint_step(p)], p) for p in complete_checkpoints(output_dir)
                  if checkpoint_step(p) in scores]
    if not candidates:
        raise HarnessError(f"no checkpoint in {output_dir} has a logged {metric}: set eval_every = save_every")
    return min(candidates, key=lambda pair: pair[0])[1]
