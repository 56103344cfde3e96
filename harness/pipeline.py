"""Train, then evaluate every checkpoint the moment it is written, then draw the leaderboard.

`train_and_evaluate` does this for one method and recipe; every checkpoint is evaluated with one `EvalConfig` (the
`harness eval` settings: tasks, decoding, samples, chat template, engine options), only the model and its name
changing. `tiny_distillation` is the built-in recipe behind `harness train-and-eval minillm` with no config: the
tiny teacher, a student initialised by SFT (the checkpoint with the lowest validation loss), then SFT, KD, SeqKD and
MiniLLM students from it, all evaluated on `synth`. `tiny_rlvr` is the one behind `harness train-and-eval trapo`:
the tiny math policy initialised by a short SFT, then GRPO, SFT-then-RL and TRAPO from it with equal step
budgets, all evaluated on `math_synth`. `tiny_cropi` is the one behind `harness train-and-eval cropi`: from the same
SFT initialisation, full-data GRPO and CROPI on one training pool with equal steps, and the step speed-up.
`tiny_ppt` is the one behind `harness train-and-eval ppt`: the frozen language model alone, a soft prompt
pre-trained on the tiny corpus, then PT, PPT and FT tuned on several 32-shot splits of `ppt_synth`, each method's
splits summarised as one result (mean and spread over the splits). `tiny_picl` is the one behind
`harness train-and-eval picl`: the tiny retriever and corpus of `harness.tiny_picl`, then PICL and ExtraLM from the
same untrained student.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
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
    """The recipe of a known method: `config`, else its built-in one in configs/."""
    from harness.trainers import get_trainer

    get_trainer(method)  # an unknown method is named as such, not as a missing recipe
    path = Path(config) if config else CONFIGS / f"{method}.yaml"
    if not path.is_file():
        raise HarnessError(f"no recipe at {path}: pass --config FILE (see configs/ for examples)")
    return path


def checkpoint_name(method: str, step: int) -> str:
    """The results-folder name of a trainer checkpoint (the leaderboard shows it as method@step)."""
    return f"{method}__step-{step}"


def evaluate_checkpoint(path: Path, method: str, step: int, evaluation: EvalConfig,
                        selected_by: str | None = None, init: str | None = None) -> list[Path]:
    """Evaluate one checkpoint; with `selected_by` (the validation metric that chose it), as the method's result.
    `init` names the method whose checkpoint this training started from (the report draws it as a reference)."""
    training = {"method": method, "step": step, **({"selected_by": selected_by} if selected_by else {}),
                **({"init": init} if init else {})}
    name = f"{method}__selected" if selected_by else checkpoint_name(method, step)
    config = dataclasses.replace(evaluation, model=str(path), name=name,
                                 overwrite=True,  # the pipeline owns these names; a retrained step replaces them
                                 training=training)
    return evaluate(config)


def train_and_evaluate(method: str, config: str | Path | None, overrides: Iterable[str],
                       evaluation: EvalConfig, label: str | None = None, init: str | None = None) -> list[Path]:
    """Train `method`; evaluate each checkpoint as soon as it is complete, then the one its validation metric
    chooses (the trainer's `selection_metric`: test scores never choose) as the method's result. Returns the
    checkpoints. `init` is the leaderboard name of the method the training starts from, if it has one."""
    from harness.trainers import get_trainer, train
    from harness.trainers.checkpoint import best_checkpoint, checkpoint_step

    def on_checkpoint(path: Path, step: int) -> None:
        evaluate_checkpoint(path, label or method, step, evaluation, init=init)

    checkpoints = train(method, recipe_path(method, config), list(overrides), on_checkpoint=on_checkpoint)
    for path in checkpoints:  # checkpoints finished before an interruption, evaluated now (cache makes it cheap)
        step = checkpoint_step(path)
        if not (Path(evaluation.output_dir) / checkpoint_name(label or method, step)).is_dir():
            evaluate_checkpoint(path, label or method, step, evaluation, init=init)
    metric, lower_is_better = get_trainer(method).selection_metric
    chosen = best_checkpoint(checkpoints[-1].parent, metric, lower_is_better)
    evaluate_checkpoint(chosen, label or method, checkpoint_step(chosen), evaluation, selected_by=metric, init=init)
    return checkpoints


class Laps(dict):
    """Wall-clock seconds per stage: `lap(stage)` records the time since the previous lap (or the start)."""

    def __init__(self) -> None:
        super().__init__()
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self[stage], self.last = now - self.last, now


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

    timings = Laps()
    paths = tiny.build(progress=evaluation.progress)
    root = Path(evaluation.output_dir) / "train"
    data = paths.data / "synth"
    timings.lap("build")

    evaluate(dataclasses.replace(evaluation, model=str(paths.teacher), name="teacher", overwrite=True))
    timings.lap("teacher")

    common = [f"teacher={paths.teacher}", f"data_dir={data}", f"progress={evaluation.progress}"]
    init = root / "sft-init"
    train_and_evaluate("sft", None, [*common, *SFT_INIT, f"model={paths.student}", f"output_dir={init}"],
                       evaluation, label="sft-init")
    student = best_checkpoint(init)
    timings.lap("sft-init")
    for method in methods:
        train_and_evaluate(method, None, [*common, f"model={student}", f"output_dir={root / method}"], evaluation,
                           init="sft-init")
        timings.lap(method)
    return timings


def tiny_rlvr(evaluation: EvalConfig) -> dict[str, float]:
    """The built-in RLVR recipe (configs/grpo.yaml, configs/trapo.yaml); returns the wall-clock seconds of each stage.

    A short SFT on the expert solutions gives the initial policy (solving a minority of the problems). From it,
    with the same number of RL steps each: GRPO; SFT-then-RL (more SFT on the expert solutions, then GRPO; the
    extra SFT steps are its head start, as in the paper's baseline); TRAPO.
    """
    return single_threaded(lambda: _rlvr_stages(evaluation))


def _rlvr_stages(evaluation: EvalConfig) -> dict[str, float]:
    from harness.trainers import train
    from harness.trainers.checkpoint import best_checkpoint

    timings = Laps()
    policy, common, root = _rlvr_initial_policy(evaluation, timings)
    train_and_evaluate("grpo", None, [*common, f"model={policy}", f"output_dir={root / 'grpo'}"], evaluation,
                       init="sft-init")
    timings.lap("grpo")
    sft_more = root / "sft-more"
    train("sft", recipe_path("sft", None), [*common, *RLVR_SFT, f"model={policy}", f"output_dir={sft_more}"])
    train_and_evaluate("grpo", None, [*common, f"model={best_checkpoint(sft_more)}",
                                      f"output_dir={root / 'sft-then-rl'}"], evaluation, label="sft-then-rl")
    timings.lap("sft-then-rl")
    train_and_evaluate("trapo", None, [*common, f"model={policy}", f"output_dir={root / 'trapo'}"], evaluation,
                       init="sft-init")
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
    train_and_evaluate("grpo", None, [*common, *same, f"model={policy}", f"output_dir={root / 'grpo'}"], evaluation,
                       init="sft-init")
    timings.lap("grpo")
    train_and_evaluate("cropi", None, [*common, f"model={policy}", f"output_dir={root / 'cropi'}"], evaluation,
                       init="sft-init")
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


# The tiny PPT recipe (configs/ppt.yaml otherwise). A 20-token prompt instead of the paper's 100 keeps the frozen
# model's passes short on a CPU; FT gets a rate for a 0.5M-parameter model (the spec's 5e-6 is for billions).
PPT_TINY = ("num_virtual_tokens=20", "epochs=8", "eval_every=16", "save_every=16")
# Prompt pre-training at the rate of Lester et al.'s prompt tuning (0.3); the spec gives no pre-training rate.
PPT_PRETRAIN = ("format=single", "pretrain_rows=800", "valid_rows=64", "lr=0.3", "max_steps=60", "eval_every=30",
                "save_every=30")
PPT_SPLITS = (1, 2, 3)


def tiny_ppt(evaluation: EvalConfig, splits: Iterable[int] = PPT_SPLITS) -> dict[str, float]:
    """The built-in PPT recipe; returns the wall-clock seconds of each stage."""
    return single_threaded(lambda: _ppt_stages(evaluation, tuple(splits)))


def _ppt_stages(evaluation: EvalConfig, splits: tuple[int, ...]) -> dict[str, float]:
    from harness import tiny_ppt as tiny
    from harness.trainers.checkpoint import best_checkpoint

    timings = Laps()
    paths = tiny.build()
    root = Path(evaluation.output_dir) / "train"
    common = [f"model={paths.model}", f"progress={evaluation.progress}", *PPT_TINY]
    timings.lap("build")
    evaluate(dataclasses.replace(evaluation, model=str(paths.model), name="frozen-lm", overwrite=True))  # no prompt
    timings.lap("frozen-lm")
    pretrain = root / "ppt-pretrain"
    train_and_evaluate("ppt", None, [*common, "task=", f"corpus={paths.corpus}", f"classifier={paths.classifier}",
                                     *PPT_PRETRAIN, f"output_dir={pretrain}"], evaluation, label="ppt-pretrain")
    timings.lap("pretrain")
    methods = {"pt": ["prompt_init=random"], "ppt": [f"prompt_init={best_checkpoint(pretrain, 'valid_acc', False)}"],
               "ft": ["tune=full", "lr=5e-4"]}
    for method, options in methods.items():
        for split in splits:
            label = f"{method}-split{split}"
            train_and_evaluate("ppt", None, [*common, *options, f"split_seed={split}", f"output_dir={root / label}"],
                               evaluation, label=label, init="frozen-lm")
        summarise_splits(Path(evaluation.output_dir), method, [f"{method}-split{split}" for split in splits])
        timings.lap(method)
    return timings


def summarise_splits(root: Path, name: str, labels: list[str]) -> list[Path]:
    """One result per task for `name`: the mean and population spread (`<metric>_std`) of the main metric over
    the few-shot splits, each split's checkpoint chosen by its dev set; the members are named in `splits`."""
    from harness import store

    written = []
    for task_folder in sorted((root / f"{labels[0]}__selected").iterdir()):
        members = [json.loads((root / f"{label}__selected" / task_folder.name / "results.json").read_text())
                   for label in labels]
        main = members[0]["main_metric"]
        values = [member["metrics"][main] for member in members]
        identity = hashlib.sha256(" ".join(m["model_identity"] for m in members).encode()).hexdigest()
        record = {key: members[0][key] for key in ("schema_version", "task", "suites", "main_metric",
                                                   "higher_is_better", "num_docs", "versions")}
        record.update(model=name, model_identity=identity, created=members[-1]["created"],
                      metrics={main: statistics.fmean(values), f"{main}_std": statistics.pstdev(values)},
                      splits=[{"model": label, "checkpoint": m["config"]["model"], main: value}
                              for label, m, value in zip(labels, members, values)])
        written.append(store.write_results(store.task_dir(root, name, record["task"]), record, [], overwrite=True))
    return written


def tiny_picl(evaluation: EvalConfig) -> dict[str, float]:
    """The built-in PICL recipe (configs/picl.yaml, configs/extralm.yaml); returns the wall-clock seconds of each stage.

    The untrained tiny student is evaluated as `init`; PICL (retriever, neighbours, instances, then the 1:1 mix of
    instances and LM chunks) and ExtraLM (the LM chunks alone) start from it with the same steps and batch.
    """
    return single_threaded(lambda: _picl_stages(evaluation))


def _picl_stages(evaluation: EvalConfig) -> dict[str, float]:
    from harness import tiny_picl

    timings = Laps()
    paths = tiny_picl.build()
    root = Path(evaluation.output_dir) / "train"
    common = [f"model={paths.student}", f"corpus_file={paths.corpus}", f"artifacts_dir={root / 'picl-artifacts'}",
              f"progress={evaluation.progress}"]
    timings.lap("build")
    evaluate(dataclasses.replace(evaluation, model=str(paths.student), name="init", overwrite=True))
    timings.lap("init")
    train_and_evaluate("picl", None, [*common, f"retriever={paths.retriever}", f"retriever_data={paths.retriever_data}",
                                      f"corpus_labels={paths.labels}", f"output_dir={root / 'picl'}"], evaluation,
                       init="init")
    timings.lap("picl")
    train_and_evaluate("extralm", None, [*common, f"output_dir={root / 'extralm'}"], evaluation, init="init")
    timings.lap("extralm")
    retrieval = json.loads((root / "picl" / "retrieval.json").read_text())
    print(f"retriever: precision@{retrieval['k']} {retrieval['precision_at_k']:.3f} on the synthetic task labels "
          f"(chance {retrieval['chance']:.3f}); {retrieval['instances']} instances of "
          f"{retrieval['mean_instance_tokens']:.0f} tokens on average")
    return timings


# The built-in tiny recipe behind `harness train-and-eval METHOD` with no config.
TINY_RECIPES: dict[str, Callable[[EvalConfig], dict[str, float]]] = {
    "minillm": tiny_distillation, "trapo": tiny_rlvr, "cropi": tiny_cropi, "picl": tiny_picl, "ppt": tiny_ppt}
