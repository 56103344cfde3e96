"""The `harness` command line. Flags become one config object handed to the same functions a Python user calls.

Heavy libraries (torch, transformers, vLLM) are imported inside the commands, so `--help` and `harness tasks`
answer at once. User mistakes (HarnessError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.errors import HarnessError

EPILOG_EVAL = """examples:
  harness eval                                   tiny built-in teacher on the synthetic suite
  harness eval --model ./ckpt --tasks instruct --data-dir ../shared/data
  harness eval --model Qwen/Qwen2.5-0.5B --tasks dolly --backend vllm --limit 50
  harness eval --model ./ckpt --tasks dolly --seeds 10 --gen-kwargs temperature=0,max_new_tokens=128
  harness eval --model ./ckpt --tasks icl_cls --data-dir ../shared/data --num-fewshot 8
"""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line with the way to the full help, instead of the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (run `{self.prog} --help` for the options)\n")


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer, e.g. 10,20,30")
    return values


def parse_gen_kwargs(text: str) -> dict:
    """'temperature=0,max_new_tokens=64' -> {'temperature': 0, 'max_new_tokens': 64} (values read as YAML)."""
    from harness.config import parse_overrides

    pairs = [part for part in text.split(",") if part.strip()]
    try:
        return parse_overrides(pairs)
    except HarnessError:
        raise argparse.ArgumentTypeError(f"{text!r} must look like key=value,key=value") from None


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", help="YAML file of eval settings (any flag below, by its long name with underscores)")
    add("--model", help="HF-format checkpoint folder or hub id (default: the built-in tiny teacher)")
    add("--tasks", help="task and suite names, comma-separated, or 'all' (default: synth; instruct when --model "
        "is given); see `harness tasks`")
    add("--backend", choices=["hf", "vllm", "auto"], help="hf = transformers (default), vllm, or auto")
    add("--data-dir", help="folder laid out like shared/data (default: $HARNESS_DATA_DIR, then the hub)")
    add("--output-dir", help="results root (default: runs)")
    add("--name", help="results folder and leaderboard name for the model (default: from its path)")
    add("--seeds", type=_csv_ints, help="sampling seeds, e.g. 10,20,30 (default: the task's)")
    add("--num-fewshot", type=int, metavar="K", help="demonstrations per prompt for few-shot tasks (0 = zero-shot; "
        "default: the task's, 4 for the ICL suites); every seed draws its own")
    add("--samples", type=int, help="samples per prompt, e.g. 32 for avg@32 (default: the task's)")
    add("--limit", type=int, help="evaluate only the first N rows of each task")
    add("--gen-kwargs", type=parse_gen_kwargs, help="decoding overrides: temperature, top_p, top_k, "
        "max_new_tokens, no_repeat_ngram_size, stop, do_sample, e.g. temperature=0,max_new_tokens=128")
    add("--teacher", help="teacher checkpoint, for tasks that compare the model with a teacher")
    add("--batch-size", type=int, help="batch size of the transformers backend (default: 32)")
    add("--device", help="cpu, cuda, cuda:1 ... (default: a GPU when present)")
    add("--dtype", help="auto (default), float32, bfloat16, float16")
    add("--trust-remote-code", action="store_true", default=None, help="allow checkpoints that ship Python code")
    add("--overwrite", action="store_true", default=None, help="replace results of other weights under --name")
    add("--no-progress", dest="progress", action="store_false", default=None, help="hide progress bars")
    add("--chat-template", action="store_true", default=None,
        help="wrap each prompt in the model's chat template as one user turn (default: plain prompts)")
    add("--protocol", metavar="NAME", help="a paper's evaluation protocol for the math tasks (prompt, decoding and "
        "verifier together): default, trapo, qwen25-math-cot, simplerl (default: the suite's, e.g. trapo for "
        "trapo5, else default); see docs/math.md")
    analyses = parser.add_argument_group("MiniLLM analyses")
    analyses.add_argument("--length-tokenizer", metavar="PATH", help="tokenizer folder that counts reference "
                          "lengths for the S-NI/UnNI length buckets (GPT-2's in the paper; default: words)")
    analyses.add_argument("--exposure-average", choices=["generating", "all"], help="ExAccErr: average each "
                          "position over the samples still generating there (default, the released script) or "
                          "over all samples, ended ones counting 0")
    analyses.add_argument("--exposure-first-token", action="store_true", default=None, help="ExAccErr from the "
                          "first response token (the released script starts at the second)")
    _add_engine_arguments(parser)


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    vllm = parser.add_argument_group("vLLM engine options")
    vllm.add_argument("--tensor-parallel-size", type=int)
    vllm.add_argument("--data-parallel-size", type=int)
    vllm.add_argument("--gpu-memory-utilization", type=float)
    vllm.add_argument("--max-model-len", type=int)
    vllm.add_argument("--enforce-eager", action="store_true", default=None)


_ENGINE_OPTIONS = ("tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization", "max_model_len",
                   "enforce_eager")


def eval_config_from_args(args: argparse.Namespace, recipe: bool = False):
    """The EvalConfig of `harness eval`'s flags; with `recipe` (train-and-eval), --config is the training recipe
    and the method and its overrides are not evaluation settings."""
    from harness import config as configuration
    from harness.runner import EvalConfig

    given = {key: value for key, value in vars(args).items() if value is not None}
    engine = {key: given.pop(key) for key in _ENGINE_OPTIONS if key in given}
    path = given.pop("config", None)
    for key in ("command", "handler", "method", "overrides"):
        given.pop(key, None)
    if recipe:
        path = None
    settings = configuration.read_yaml(path) if path else {}
    settings.update(given)
    if engine:
        settings["backend_options"] = {**settings.get("backend_options", {}), **engine}
    if "model" in given and "tasks" not in settings:
        settings["tasks"] = "instruct"
    return configuration.from_dict(EvalConfig, settings)


def cmd_eval(args: argparse.Namespace) -> None:
    from harness.runner import evaluate

    config = eval_config_from_args(args)
    written = evaluate(config)
    print_summary(written)


def print_summary(paths) -> None:
    import json

    from harness.metrics.stats import format_score

    for path in paths:
        record = json.loads(path.read_text())
        main = record["main_metric"]
        shown = format_score(record["metrics"], main)
        print(f"{record['model']:<24} {record['task']:<16} {main} {shown:<16} {path}")


def cmd_tasks(args: argparse.Namespace) -> None:
    from harness.registry import get_suite, get_task, protocols, suites, task_names

    for name in task_names():
        task = get_task(name)
        source = task.data.local_file if not task.data.builtin else "built-in (harness tiny)"
        hub = f"  hub: {task.data.hub_id}" if task.data.hub_id else ""
        print(f"{name:<16} {task.description}  [data: {source}{hub}]")
    for name, tasks in suites().items():
        suite = get_suite(name)
        about = f"  ({suite.description})" if suite and suite.description else ""
        about += f"  [protocol: {suite.protocol}]" if suite and suite.protocol else ""
        print(f"suite {name:<10} {', '.join(tasks)}{about}")
        for task, levels in (suite.hierarchy.items() if suite else ()):
            print(f"    {task:<20} {' -> '.join(levels)}")
    for name, source in protocols().items():
        print(f"protocol {name:<16} {source}")


def cmd_tiny(args: argparse.Namespace) -> None:
    from harness import tiny

    paths = tiny.build(force=args.force)
    print(f"teacher: {paths.teacher}\nstudent: {paths.student}\ndata: {paths.data}")


def cmd_report(args: argparse.Namespace) -> None:
    from harness.reports import write_leaderboard
    from harness.reports.analysis_plots import register_length_baseline
    from harness.validation import check_writable_folder

    root = Path(args.output_dir)
    if not root.exists():
        raise HarnessError(f"no results under {root}: run `harness eval` first or pass --output-dir")
    check_writable_folder(root, "--output-dir")  # the leaderboard is written there
    if args.baseline:
        register_length_baseline(args.baseline)
    for path in write_leaderboard(root):
        print(path)


def cmd_compare(args: argparse.Namespace) -> None:
    from harness.compare import compare_runs, format_comparison

    tasks = [task for task in args.tasks.split(",") if task.strip()] if args.tasks else None
    rows = compare_runs(Path(args.run_a), Path(args.run_b), tasks, args.metric, args.seed)
    print(format_comparison(Path(args.run_a).name, Path(args.run_b).name, rows))


def cmd_train(args: argparse.Namespace) -> None:
    from harness.pipeline import recipe_path
    from harness.trainers import train

    recipe = recipe_path(args.method, args.config)
    if args.show_config:
        import yaml

        from harness.config import load, to_dict
        from harness.trainers import config_class

        print(yaml.safe_dump(to_dict(load(config_class(args.method), recipe, args.overrides)), sort_keys=False), end="")
        return
    for path in train(args.method, recipe, args.overrides):
        print(path)


RLVR_METHODS = ("grpo", "trapo", "cropi")


def format_speedup(record: dict) -> str:
    """One line: the step speed-up of CROPI over full-data GRPO, with the spread one standard error allows."""
    def times(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.2f}x"

    line = (f"step speed-up: {times(record['speedup'])} to reach {record['baseline_final']:.2f} ({record['task']} main "
            f"metric of grpo@{record['baseline_steps']}, standard error {record['baseline_stderr']:.2f}); "
            f"{times(record['speedup_low_target'])} for one standard error less, "
            f"{times(record['speedup_high_target'])} for one more")
    if not record["baseline_improved"]:
        line += (f"; but grpo ended below the initial policy ({record['initial']:.2f}), so this measures no learning "
                 "speed-up")
    return line


def cmd_train_and_eval(args: argparse.Namespace) -> None:
    from harness.pipeline import step_speedup, tiny_cropi, tiny_distillation, tiny_rlvr, train_and_evaluate
    from harness.reports import write_leaderboard

    if args.tasks is None:
        args.tasks = "math_synth" if args.method in RLVR_METHODS else "synth"
    evaluation = eval_config_from_args(args, recipe=True)
    tiny = args.config is None and not args.overrides
    if tiny and args.method in ("minillm", "trapo"):
        timings = tiny_distillation(evaluation) if args.method == "minillm" else tiny_rlvr(evaluation)
        print("stage seconds: " + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in timings.items()))
    elif tiny and args.method == "cropi":
        timings = tiny_cropi(evaluation)
        print("stage seconds: " + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in timings.items()))
        print(format_speedup(step_speedup(Path(evaluation.output_dir), args.tasks.split(",")[0])))
    else:
        train_and_evaluate(args.method, args.config, args.overrides, evaluation)
    for path in write_leaderboard(Path(evaluation.output_dir)):
        print(path)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", help="sft, kd, seqkd, minillm, grpo, trapo or cropi (or a plug-in trainer)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe settings to override, e.g. lr=1e-4")
    parser.add_argument("--config", help="YAML recipe (default: configs/METHOD.yaml, the tiny CPU recipe)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harness",
        description="Evaluate and distil language models on the protocols of MiniLLM, PICL, PPT, CUGE, TRAPO, CROPI.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str, **kwargs) -> argparse.ArgumentParser:
        # argparse %-formats help strings (not descriptions): a literal % must be doubled there
        sub = commands.add_parser(name, help=help_text.replace("%", "%%"), description=help_text, **kwargs)
        sub.set_defaults(handler=handler)
        return sub

    evaluation = command("eval", cmd_eval, "evaluate a checkpoint on tasks and suites; results go under runs/",
                         epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_eval_arguments(evaluation)
    command("tasks", cmd_tasks, "list every task and suite with its data source")
    tiny = command("tiny", cmd_tiny, "build (once) the tiny teacher, student and synthetic data; print their paths")
    tiny.add_argument("--force", action="store_true", help="rebuild even if cached")
    report = command("report", cmd_report, "write leaderboard.md and leaderboard.html from every results.json")
    report.add_argument("--output-dir", default="runs", help="results root to read (default: runs)")
    report.add_argument("--baseline", help="model name to subtract in the ROUGE-L-per-length figure, e.g. sft@80")
    compare = command("compare", cmd_compare, "paired differences of two models on the same documents: mean "
                      "difference, 95% paired-bootstrap interval and permutation p-value per task",
                      epilog="example:\n  harness compare runs/student runs/teacher --tasks dolly,gsm8k",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("run_a", help="results folder of model A, e.g. runs/student")
    compare.add_argument("run_b", help="results folder of model B, e.g. runs/teacher")
    compare.add_argument("--tasks", help="tasks to compare, comma-separated (default: every task both runs hold)")
    compare.add_argument("--metric", help="metric to compare (default: each task's main metric)")
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and permutation draws")
    training = command("train", cmd_train, "train a student with a recipe and save HF checkpoints")
    _add_train_arguments(training)
    training.add_argument("--show-config", action="store_true",
                          help="print every setting of the method with its resolved value (defaults, recipe, "
                               "overrides) and exit without training")
    both = command("train-and-eval", cmd_train_and_eval,
                   "train, evaluate every checkpoint as soon as it is written, then write the leaderboard; "
                   "`harness train-and-eval minillm` alone runs the built-in tiny distillation recipe (teacher, "
                   "SFT-initialised student, SFT/KD/SeqKD/MiniLLM students) on the CPU in minutes; "
                   "`harness train-and-eval trapo` alone the tiny RLVR recipe (GRPO, SFT-then-RL, TRAPO); "
                   "`harness train-and-eval cropi` alone full-data GRPO against CROPI, with the step speed-up")
    _add_train_arguments(both)
    both.add_argument("--tasks", help="tasks evaluated at each checkpoint (default: math_synth for grpo, trapo and "
                      "cropi, else synth)")
    both.add_argument("--output-dir", default="runs", help="results root (default: runs)")
    both.add_argument("--data-dir", help="data folder for the evaluation tasks")
    both.add_argument("--limit", type=int, help="evaluate only the first N rows of each task")
    both.add_argument("--seeds", type=_csv_ints, help="sampling seeds of the evaluation (default: the task's)")
    both.add_argument("--samples", type=int, help="samples per prompt of the evaluation, e.g. 32 for avg@32")
    both.add_argument("--gen-kwargs", type=parse_gen_kwargs, help="decoding overrides of the evaluation, as for eval")
    both.add_argument("--chat-template", action="store_true", default=None,
                      help="evaluate with prompts wrapped in the model's chat template")
    both.add_argument("--backend", default="hf", choices=["hf", "vllm", "auto"])
    both.add_argument("--batch-size", type=int, help="batch size of the transformers backend (default: 32)")
    both.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide progress bars")
    _add_engine_arguments(both)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # argparse stops collecting `key=value` overrides at the first option; the ones after it belong there too
    if hasattr(args, "overrides") and unknown and all("=" in arg and not arg.startswith("-") for arg in unknown):
        args.overrides += unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
