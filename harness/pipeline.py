"""Train, then evaluate every checkpoint the moment it is written, then draw the leaderboard.

`train_and_evaluate` does this for one method and recipe. `tiny_distillation` is the built-in recipe behind
`harness train-and-eval minillm` with no config: the tiny teacher, a student initialised by SFT (the checkpoint with
the lowest validation loss), then SFT, KD, SeqKD and MiniLLM students from it, all evaluated on `synth`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from harness.errors import HarnessError
from harness.runner import EvalConfig, evaluate

CONFIGS = Path(str(resources.files("harness.configs")))
DISTILLATION_METHODS = ("sft", "kd", "seqkd", "minillm")
# The tiny student's SFT initialisation: configs/sft.yaml with a higher rate and its own length, so the student
# clearly knows the task yet stays below the teacher, leaving something to distil.
SFT_INIT = ("max_steps=600", "lr=2.0e-3", "warmup_steps=30", "eval_every=300", "save_every=300")


@dataclass
class PipelineSettings:
    """How checkpoints are evaluated; the recipe says how they are trained."""

    tasks: str = "synth"
    output_dir: str = "runs"
    data_dir: str | None = None
    limit: int | None = None
    seeds: tuple[int, ...] | None = None
    backend: str = "hf"
    progress: bool = True


def recipe_path(method: str, config: str | Path | None) -> Path:
    path = Path(config) if config else CONFIGS / f"{method}.yaml"
    if not path.is_file():
        raise HarnessError(f"no recipe at {path}: pass --config FILE (see configs/ for examples)")
    return path


def checkpoint_name(method: str, step: int) -> str:
    """The results-folder name of a trainer checkpoint (the leaderboard shows it as method@step)."""
    return f"{method}__step-{step}"


def evaluate_checkpoint(path: Path, method: str, step: int, settings: PipelineSettings,
                        selected_by: str | None = None) -> list[Path]:
    """Evaluate one checkpoint; with `selected_by` (the validation metric that chose it), as the method's result."""
    training = {"method": method, "step": step, **({"selected_by": selected_by} if selected_by else {})}
    name = f"{method}__selected" if selected_by else checkpoint_name(method, step)
    config = EvalConfig(model=str(path), tasks=settings.tasks, data_dir=settings.data_dir,
                        output_dir=settings.output_dir, name=name, limit=settings.limit,
                        seeds=settings.seeds, backend=settings.backend, progress=settings.progress,
                        overwrite=True,  # the pipeline owns these names; a retrained step replaces its results
                        training=training)
    return evaluate(config)


def train_and_evaluate(method: str, config: str | Path | None, overrides: Iterable[str],
                       settings: PipelineSettings, label: str | None = None) -> list[Path]:
    """Train `method`; evaluate each checkpoint as soon as it is complete, then the one its validation metric
    chooses (the trainer's `selection_metric`: test scores never choose) as the method's result. Returns the
    checkpoints."""
    from harness.trainers import get_trainer, train
    from harness.trainers.checkpoint import best_checkpoint, checkpoint_step

    def on_checkpoint(path: Path, step: int) -> None:
        evaluate_checkpoint(path, label or method, step, settings)

    checkpoints = train(method, recipe_path(method, config), list(overrides), on_checkpoint=on_checkpoint)
    for path in checkpoints:  # checkpoints finished before an interruption, evaluated now (cache makes it cheap)
        step = checkpoint_step(path)
        if not (Path(settings.output_dir) / checkpoint_name(label or method, step)).is_dir():
            evaluate_checkpoint(path, label or method, step, settings)
    metric, lower_is_better = get_trainer(method).selection_metric
    chosen = best_checkpoint(checkpoints[-1].parent, metric, lower_is_better)
    evaluate_checkpoint(chosen, label or method, checkpoint_step(chosen), settings, selected_by=metric)
    return checkpoints


def tiny_distillation(settings: PipelineSettings, methods: Iterable[str] = DISTILLATION_METHODS) -> dict[str, float]:
    """The built-in recipe; returns the wall-clock seconds of each stage."""
    import torch

    threads = torch.get_num_threads()
    # Sub-million-parameter models gain nothing from a second thread, and on a busy machine a thread team waits for
    # a descheduled member: a 0.04 s SFT step took 2.5 s with two threads on two loaded cores.
    torch.set_num_threads(1)
    try:
        return _tiny_stages(settings, methods)
    finally:
        torch.set_num_threads(threads)


def _tiny_stages(settings: PipelineSettings, methods: Iterable[str]) -> dict[str, float]:
    from harness import tiny
    from harness.trainers.checkpoint import best_checkpoint

    timings: dict[str, float] = {}
    start = time.perf_counter()
    paths = tiny.build(progress=settings.progress)
    root = Path(settings.output_dir) / "train"
    data = paths.data / "synth"
    timings["build"] = time.perf_counter() - start

    evaluate(EvalConfig(model=str(paths.teacher), tasks=settings.tasks, output_dir=settings.output_dir,
                        name="teacher", limit=settings.limit, seeds=settings.seeds, progress=settings.progress,
                        overwrite=True))
    timings["teacher"] = time.perf_counter() - start - sum(timings.values())

    common = [f"teacher={paths.teacher}", f"data_dir={data}", f"progress={settings.progress}"]
    init = root / "sft-init"
    train_and_evaluate("sft", None, [*common, *SFT_INIT, f"model={paths.student}", f"output_dir={init}"],
                       settings, label="sft-init")
    student = best_checkpoint(init)
    timings["sft-init"] = time.perf_counter() - start - sum(timings.values())
    for method in methods:
        train_and_evaluate(method, None, [*common, f"model={student}", f"output_dir={root / method}"], settings)
        timings[method] = time.perf_counter() - start - sum(timings.values())
    return timings
