"""Leaderboard figures: a registry of figure makers, the built-in ones, and saving them as PNG.

A figure maker takes the list of stored `results.json` dicts (in leaderboard row order) and returns a
matplotlib `Figure`, or None when those results hold nothing it can plot. Built-ins register through
`register_figure` exactly as a user's own maker would (third-party packages via the `harness.figures`
entry-point group). matplotlib is imported inside the makers so importing the harness stays fast, and
figures are built on `matplotlib.figure.Figure` with an Agg canvas rather than through pyplot, so no global
backend state is touched and nothing leaks between calls.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.metrics.stats import metric_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FigureMaker = Callable[[list[dict[str, Any]]], "Figure | None"]

FIGURES: dict[str, FigureMaker] = {}
CAPTIONS: dict[str, str] = {}  # name -> the sentence under the figure (default: the maker's docstring's first line)
# The main chart keeps a leaderboard-specific file name; every other figure is saved as `<name>.png`.
FILE_NAMES = {"main_metric_bars": "leaderboard_main.png"}
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PLUGINS_LOADED = False
# matplotlib's tab10 then its lighter tab20 partners: one colour per method in every figure and table.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")


def register_figure(name: str, caption: str | None = None) -> Callable[[FigureMaker], FigureMaker]:
    """Register a figure maker under `name`, which is also its PNG file name next to the HTML; `caption` is the
    sentence printed under it (default: the first line of the maker's docstring)."""
    if not _NAME.fullmatch(name):
        raise HarnessError(f"figure name {name!r} is not a usable file name; use letters, digits, '_' or '-'")

    def decorator(maker: FigureMaker) -> FigureMaker:
        previous = FIGURES.get(name)
        if previous is not None and _qualified(previous) != _qualified(maker):
            owner = _qualified(previous)
            raise HarnessError(f"figure {name!r} is already registered by {owner}; pick another name")
        FIGURES[name] = maker
        CAPTIONS[name] = caption or (maker.__doc__ or name).strip().splitlines()[0]
        return maker

    return decorator


def _qualified(maker: FigureMaker) -> str:
    return f"{getattr(maker, '__module__', '?')}.{getattr(maker, '__qualname__', repr(maker))}"


def display_name(result: dict[str, Any]) -> str:
    """Row and legend label: `method@step` for trainer checkpoints, `method (@step, by metric)` for the one a
    validation metric chose as the method's result, else the model name."""
    training = result.get("training")
    if isinstance(training, dict):
        if training.get("selected_by"):
            return f"{training['method']} (@{training['step']}, by {training['selected_by']})"
        return f"{training['method']}@{training['step']}"
    return str(result["model"])


def method_of(result: dict[str, Any]) -> str:
    """What a colour stands for: the training method of a checkpoint, else the model's name."""
    training = result.get("training")
    return training["method"] if isinstance(training, dict) else str(result["model"])


def method_colours(results: list[dict[str, Any]]) -> dict[str, str]:
    """Method -> colour, by sorted method name, so a method keeps its colour whatever the scores."""
    methods = sorted({method_of(r) for r in results})
    return {method: PALETTE[i % len(PALETTE)] for i, method in enumerate(methods)}


def summary_names(results: list[dict[str, Any]]) -> set[str]:
    """The rows of the summary: each untrained model, and per training method the checkpoint its validation metric
    chose, or its last checkpoint when none was chosen. Its other checkpoints are grouped behind that row."""
    chosen: dict[str, tuple[bool, int, str]] = {}
    names = set()
    for result in results:
        training = result.get("training")
        if not isinstance(training, dict):
            names.add(display_name(result))
            continue
        rank = (bool(training.get("selected_by")), training["step"], display_name(result))
        chosen[training["method"]] = max(chosen.get(training["method"], rank), rank)
    return names | {rank[2] for rank in chosen.values()}


def summary_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results of the summary rows only: what a figure comparing models (not checkpoints) shows."""
    shown = summary_names(results)
    return [r for r in results if display_name(r) in shown]


def initialisations(results: list[dict[str, Any]]) -> set[str]:
    """Methods that other methods started from (`training.init`): reference lines, not curves, in the plots."""
    return {r["training"]["init"] for r in results if isinstance(r.get("training"), dict) and r["training"].get("init")}


def figure_path(out_dir: Path, name: str) -> Path:
    return out_dir / FILE_NAMES.get(name, f"{name}.png")


def _load_plugins() -> None:
    """Third-party packages add figures through the `harness.figures` entry-point group."""
    global _PLUGINS_LOADED
    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
        for entry in entry_points(group="harness.figures"):
            entry.load()


def render_figures(results: list[dict[str, Any]], out_dir: Path) -> list[tuple[str, Path]]:
    """Run every registered maker and save its figure; returns (name, png path) for the figures drawn."""
    _load_plugins()
    written = []
    for name, maker in FIGURES.items():
        path = figure_path(out_dir, name)
        figure = maker(results)
        if figure is None:
            # A PNG left by an earlier store would contradict the tables it now sits beside.
            path.unlink(missing_ok=True)
            continue
        figure.savefig(path, format="png", dpi=100, bbox_inches="tight")
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # a third-party maker may have used pyplot, which keeps figures alive
            pyplot.close(figure)
        written.append((name, path))
    return written


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _first_seen(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _main_value(result: dict[str, Any]) -> float:
    return float(result["metrics"][result["main_metric"]])


def error_bar(result: dict[str, Any]) -> float:
    """The bar's whisker: one standard error over documents, else the spread over seeds, else none."""
    metrics, name = result["metrics"], result["main_metric"]
    return next((v for v in (metric_value(metrics, f"{name}_stderr"), metric_value(metrics, f"{name}_std")) if v), 0.0)


def _suite_groups(results: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Suite -> its tasks in first-seen order; tasks of no suite under "other tasks"."""
    groups: dict[str, list[str]] = {}
    for result in results:
        for suite in result.get("suites") or ["other tasks"]:
            groups.setdefault(suite, [])
            if result["task"] not in groups[suite]:
                groups[suite].append(result["task"])
    return dict(sorted(groups.items(), key=lambda item: (item[0] == "other tasks", item[0])))


@register_figure("main_metric_bars", caption="Main metric of every task, one panel per suite and one bar per model "
                 "(a trained method by its chosen or last checkpoint); whiskers are one standard error over "
                 "documents, or the spread over seeds where no standard error is stored.")
def main_metric_bars(results: list[dict[str, Any]]) -> Figure | None:
    """Grouped bars per suite: one group per task, one bar per summary model, with error bars."""
    results = summary_results(results)
    if not results:
        return None
    colours = method_colours(results)
    groups = _suite_groups(results)
    models = _first_seen([display_name(r) for r in results])
    by_cell = {(display_name(r), r["task"]): r for r in results}
    main = {r["task"]: r["main_metric"] for r in results}
    widths = [max(3.0, 0.35 * len(tasks) * len(models) + 1.0) for tasks in groups.values()]
    figure = _new_figure(min(16.0, max(6.0, sum(widths))), 4.2)
    grid = figure.add_gridspec(1, len(groups), width_ratios=widths)
    for index, (suite, tasks) in enumerate(groups.items()):
        axes = figure.add_subplot(grid[0, index])
        present = [m for m in models if any((m, t) in by_cell for t in tasks)]
        width = 0.8 / len(present)
        for m, model in enumerate(present):
            cells = [by_cell.get((model, task)) for task in tasks]  # a missing run is no bar, not 0
            xs = [t + (m - (len(present) - 1) / 2) * width for t in range(len(tasks))]
            axes.bar(xs, [_main_value(c) if c else math.nan for c in cells], width=width, label=model,
                     yerr=[error_bar(c) if c else 0.0 for c in cells], capsize=2, ecolor="#333",
                     color=colours[method_of(next(c for c in cells if c))])
        tilt = len(tasks) > 1  # long task names of one panel would overlap
        axes.set_xticks(range(len(tasks)), [f"{task}\n({main[task]})" for task in tasks], fontsize="small",
                        rotation=20 if tilt else 0, ha="right" if tilt else "center")
        axes.set_title(suite)
        axes.grid(axis="y", alpha=0.3)
    figure.axes[0].set_ylabel("main metric")
    handles, labels = [], []
    for axes in figure.axes:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize="small")
    figure.tight_layout()
    return figure


@register_figure("training_curves", caption="Test main metric of every checkpoint against its training step, one "
                 "line per method; dashed lines are untrained models (the teacher), dotted lines the checkpoint "
                 "the methods started from.")
def training_curves(results: list[dict[str, Any]]) -> Figure | None:
    """Main metric against training step, one subplot per task and one line per training method."""
    inits = initialisations(results)
    # every checkpoint, each once: the chosen checkpoint's second record would repeat its point
    trained = [r for r in results if isinstance(r.get("training"), dict) and not r["training"].get("selected_by")
               and r["training"]["method"] not in inits]
    if not trained:
        return None
    colours = method_colours(results)
    shown = summary_names(results)
    references = [r for r in results if display_name(r) in shown
                  and (not isinstance(r.get("training"), dict) or r["training"]["method"] in inits)]
    tasks = _first_seen([r["task"] for r in trained])
    columns = min(3, len(tasks))
    rows = -(-len(tasks) // columns)
    figure = _new_figure(4.5 * columns, 3.5 * rows)
    for index, task in enumerate(tasks):
        axes = figure.add_subplot(rows, columns, index + 1)
        of_task = [r for r in trained if r["task"] == task]
        for method in _first_seen([r["training"]["method"] for r in of_task]):
            points = sorted((r["training"]["step"], _main_value(r)) for r in of_task
                            if r["training"]["method"] == method)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method,
                      color=colours[method])
        for reference in (r for r in references if r["task"] == task):
            initial = isinstance(reference.get("training"), dict)
            axes.axhline(_main_value(reference), color=colours[method_of(reference)], linewidth=1.2,
                         linestyle=":" if initial else "--",
                         label=f"{method_of(reference)} (initialisation)" if initial else display_name(reference))
        axes.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
        axes.set_title(task)
        axes.set_xlabel("step")
        axes.set_ylabel(of_task[0]["main_metric"])
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    figure.tight_layout()
    return figure
