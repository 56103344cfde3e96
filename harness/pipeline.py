"""Train, then evaluate every checkpoint the moment it is written, then draw the leaderboard.

`train_and_evaluate` does this for one method and recipe; every checkpoint is evaluated with one `EvalConfig` (the
`harness eval` settings: tasks, decoding, samples, chat template, engine options), only the model and its name
changing. `tiny_distillation` is the built-in recipe behind `harness train-and-eval minillm` with no config: the
tiny teacher, a student initialised by SFT (the checkpoint with the lowest validation loss), then SFT, KD, SeqKD and
MiniLLM students from it, all evaluated on `synth`. `tiny_rlvr` is the one behind `harness train-and-eval trapo`:
the tiny math policy initialised by a short SFT, then GRPO, SFT-then-RL and TRAPO from it with equal step
budgets, all evaluated on `math_synth`. `tiny_cropi` is the one behind `harness train-and-eval cropi`: from the same
SFT initialisation, full-data GRPO and CROPI on one training pool with equal steps, and the step speed-up.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from harness.errors import HarnessError
from harness.runner import EvalConfig, evaluate

CONFIGS = Path(str(resources.files("harness.configs")))
DISTILLATION_METHODS = ("sft", "kd", "seqkd", "minillm")
# The tiny student's SFT initialisation: configs/sft.yaml with a higher rate and its own length, so the student
# clearly knows the task yet stays below the teacher, leaving something to distil.
SFT_INIT = ("max_steps=600", "lr=2.0e-3", "warmup_steps=30", "eval_every=300", "save_every=300")
# The tiny math policy's SFT initialisation on the expert solutions (configs/sft.yaml otherwise): short, so that the
# policy writes the format but solves only a minority, leaving the reward and the guidance something to do. The
# SFT-then-RL baseline runs the same SFT once more from it before its GRPO.
RLVR_SFT = ("max_steps=120", "lr=2.0e-3", "warmup_steps=10", "batch_size=32", "eval_every=0",
            "save_every=0", "max_eval_samples=64", "max_length=128")


def recipe_path(method: str, config: str | Path | None) -> Path:
    path = Path(config) if config else CONFIGS / f"{method}.yaml"
    if not path.is_file():
        raise HarnessError(f"no recipe at {path}: pass --config FILE (see configs/ for examples)")
    return path


def checkpoint_name(method: str, step: int) -> str:
    """The results-folder name of a trainer checkpoint (the leaderboard shows it as method@step)."""
    return f"{method}__step-{step}"


def evaluate_checkpoint(path: Path, method: str, step: int, evaluation: EvalConfig,
                        selected_by: str | None = None) -> list[Path]:
    """Evaluate one checkpoint; with `selected_by` (the validation metric that chose it), as the method's result."""
    training = {"method": method, "step": step, **({"selected_by": selected_by} if selected_by else {})}
    name = f"{method}__selected" if selected_by else checkpoint_name(method, step)
    config = dataclasses.replace(evaluation, model=str(path), name=name,
                                 overwrite=True,  # the pipeline owns these names; a retrained step replaces them
                                 training=training)
    return evaluate(config)


def train_and_evaluate(method: str, config: str | Path | None, overrides: Iterable[str],
                       evaluation: EvalConfig, label: str | None = None) -> list[Path]:
    """Train `method`; evaluate each checkpoint as soon as it is complete, then the one its validation metric
    chooses (the trainer's `selection_metric`: test scores never choose) as the method's result. Returns the
    checkpoints."""
    from harness.trainers import get_trainer, train
    from harness.trainers.checkpoint import best_checkpoint, checkpoint_step

    def on_checkpoint(path: Path, step: int) -> None:
        evaluate_checkpoint(path, label or method, step, evaluation)

    checkpoints = train(method, recipe_path(method, config), list(overrides), on_checkpoint=on_checkpoint)
    for path in checkpoints:  # checkpoints finished before an interruption, evaluated now (cache makes it cheap)
        step = checkpoint_step(path)
        if not (Path(evaluation.output_dir) / checkpoint_name(label or method, step)).is_dir():
            evaluate_checkpoint(path, label or method, step, evaluation)
    metric, lower_is_better = get_trainer(method).selection_metric
    chosen = best_checkpoint(checkpoints[-1].parent, metric, lower_is_better)
    evaluate_checkpoint(chosen, label or method, checkpoint_step(chosen), evaluation, selected_by=metric)
    return checkpoints


def single_threaded(stages: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run a tiny recipe with one torch thread; returns its stage timings."""
    import torch

    threads = torch.get_num_threads()
    # Sub-million-parameter models gain nothing from a second thread, and on a busy machine a thread team waits for
    # a descheduled member: a 0.04 s SFT step took 2.5 s with two threads on two loaded cores.
    torch.set_num_threads(1)
    try:
        return stages()
    finally:
        torch.set_num_threads(threads)


def tiny_distillation(evaluation: EvalConfig, methods: Iterable[str] = DISTILLATION_METHODS) -> dict[str, float]:
    """The built-in distillation recipe; returns the wall-clock seconds of each stage."""
    return single_threaded(lambda: _distillation_stages(evaluation, methods))


def _distillation_stages(evaluation: EvalConfig, methods: Iterable[str]) -> dict[str, float]:
    from harness import tiny
    from harness.trainers.checkpoint import best_checkpoint

    timings: dict[str, float] = {}
    start = time.perf_counter()
    paths = tiny.build(progress=evaluation.progress)
    root = Path(evaluation.output_dir) / "train"
    data = paths.data / "synth"
    timings["build"] = time.perf_counter() - start

    evaluate(dataclasses.replace(evaluation, model=str(paths.teacher), name="teacher", overwrite=True))
    timings["teacher"] = time.perf_counter() - start - sum(timings.values())

    common = [f"teacher={paths.teacher}", f"data_dir={data}", f"progress={evaluation.progress}"]
    init = root / "sft-init"
    train_and_evaluate("sft", None, [*common, *SFT_INIT, f"model={paths.student}", f"output_dir={init}"],
                       evaluation, label="sft-init")
    student = best_checkpoint(init)
    timings["sft-init"] = time.perf_counter() - start - sum(timings.values())
    for method in methods:
        train_and_evaluate(method, None, [*common, f"model={student}", f"output_dir={root / method}"], evaluation)
        timings[method] = time.perf_counter() - start - sum(timings.values())
    return timings


def tiny_rlvr(evaluation: EvalConfig) -> dict[str, float]:
    """The built-in RLVR recipe (configs/grpo.yaml, configs/trapo.yaml); returns the wall-clock seconds of each stage.

    A short SFT on the expert solutions gives the initial policy (solving a minority of the problems). From it,
    with the same number of RL steps each: GRPO; SFT-then-RL (more SFT on the expert solutions, then GRPO; the
    extra SFT steps are its head start, as in the paper's baseline); TRAPO.
    """
    return single_threaded(lambda: _rlvr_stages(evaluation))


class Laps(dict):
    """Wall-clock seconds per stage: `lap(stage)` records the time since the previous lap (or the start)."""

    def __init__(self) -> None:
        super().__init__()
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self[stage], self.last = now - self.last, now


def _rlvr_stages(evaluation: EvalConfig) -> dict[str, float]:
    from harness.trainers import train
    from harness.trainers.checkpoint import best_checkpoint

    timings = Laps()
    policy, common, root = _rlvr_initial_policy(evaluation, timings)
    train_and_evaluate("grpo", None, [*common, f"model={policy}", f"output_dir={root / 'grpo'}"], evaluation)
    timings.lap("grpo")
    sft_more = root / "sft-more"
    train("sft", recipe_path("sft", None), [*common, *RLVR_SFT, f"model={policy}", f"output_dir={sft_more}"])
    train_and_evaluate("grpo", None, [*common, f"model={best_checkpoint(sft_more)}",
                                      f"output_dir={root / 'sft-then-rl'}"], evaluation, label="sft-then-rl")
    timings.lap("sft-then-rl")
    train_and_evaluate("trapo", None, [*common, f"model={policy}", f"output_dir={root / 'trapo'}"], evaluation)
    timings.lap("trapo")
    return timings


def _rlvr_initial_policy(evaluation: EvalConfig, timings: Laps) -> tuple[Path, list[str], Path]:
    """The tiny math data and the SFT-initialised policy every tiny RLVR row starts from: returns the policy, the
    settings every run shares and the training root."""
    from harness import tiny_math
    from harness.trainers.checkpoint import best_checkpoint

    paths = tiny_math.build()
    root = Path(evaluation.output_dir) / "train"
    common = [f"data_dir={paths.data / 'math_synth'}", f"progress={evaluation.progress}"]
    timings.lap("build")
    init = root / "sft-init"
    train_and_evaluate("sft", None, [*common, *RLVR_SFT, f"model={paths.policy}", f"output_dir={init}"],
                       evaluation, label="sft-init")
    timings.lap("sft-init")
    return best_checkpoint(init), common, root


def tiny_cropi(evaluation: EvalConfig) -> dict[str, float]:
    """The built-in CROPI recipe (configs/cropi.yaml); returns the wall-clock seconds of each stage.

    From the tiny RLVR recipe's SFT initialisation: full-data GRPO (configs/grpo.yaml) on CROPI's training pool with
    CROPI's steps and checkpoints, then CROPI. `step_speedup` compares their curves.
    """
    return single_threaded(lambda: _cropi_stages(evaluation))


def _cropi_stages(evaluation: EvalConfig) -> dict[str, float]:
    from harness.config import load
    from harness.trainers import config_class

    timings = Laps()
    policy, common, root = _rlvr_initial_policy(evaluation, timings)
    recipe = load(config_class("cropi"), recipe_path("cropi", None))
    pool = ("max_train_samples", "max_steps", "eval_every", "save_every")
    same = [f"{name}={getattr(recipe, name)}" for name in pool]
    train_and_evaluate("grpo", None, [*common, *same, f"model={policy}", f"output_dir={root / 'grpo'}"], evaluation)
    timings.lap("grpo")
    train_and_evaluate("cropi", None, [*common, f"model={policy}", f"output_dir={root / 'cropi'}"], evaluation)
    timings.lap("cropi")
    return timings


def step_speedup(output_dir: Path, task: str, baseline: str = "grpo", method: str = "cropi",
                 initial: str = "sft-init") -> dict:
    """The paper's speed-up: the baseline's steps to its final checkpoint over the method's steps to first reach
    that checkpoint's main metric (None when it never does), read from the stored results of every checkpoint.

    With it, the same ratio for targets one standard error below and above the baseline's final score (the spread
    the evaluation's noise allows), and the score of the policy both started from (`initial`'s last checkpoint):
    when the baseline ends below it, the ratio measures no learning and `baseline_improved` is false.
    """
    curves = {name: _curve(Path(output_dir), name, task) for name in (baseline, method)}
    if not all(curves.values()):
        raise HarnessError(f"no evaluated checkpoints of {baseline} and {method} on {task} under {output_dir}")
    last = max(curves[baseline])
    final, stderr = curves[baseline][last]
    start = _curve(Path(output_dir), initial, task)
    start_score = start[max(start)][0] if start else None

    def ratio(target: float) -> float | None:
        reached = [step for step, (value, _) in sorted(curves[method].items()) if value >= target]
        return last / reached[0] if reached else None

    return {"task": task, "initial": start_score, "baseline_improved": start_score is None or final > start_score,
            "baseline_final": final, "baseline_stderr": stderr, "baseline_steps": last,
            "speedup": ratio(final), "speedup_low_target": ratio(final - stderr),
            "speedup_high_target": ratio(final + stderr),
            "curves": {name: {step: value for step, (value, _) in sorted(curve.items())}
                       for name, curve in curves.items()}}


def _curve(output_dir: Path, method: str, task: str) -> dict[int, tuple[float, float]]:
    """step -> (main metric, its standard error) of every evaluated checkpoint of `method`."""
    import json

    curve = {}
    for path in output_dir.glob(f"{checkpoint_name(method, 0).removesuffix('0')}*/{task}/results.json"):
        result = json.loads(path.read_text())
        metrics, main = result["metrics"], result["main_metric"]
        curve[result["training"]["step"]] = (metrics[main], metrics.get(f"{main}_stderr", 0.0))
    return curve
