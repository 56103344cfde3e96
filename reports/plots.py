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

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FigureMaker = Callable[[list[dict[str, Any]]], "Figure | None"]

FIGURES: dict[str, FigureMaker] = {}
# The main chart keeps a leaderboard-specific file name; every other figure is saved as `<name>.png`.
FILE_NAMES = {"main_metric_bars": "leaderboard_main.png"}
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PLUGINS_LOADED = False


def register_figure(name: str) -> Callable[[FigureMaker], FigureMaker]:
    """Register a figure maker under `name`, which is also its PNG file name next to the HTML."""
    if not _NAME.fullmatch(name):
        raise HarnessError(f"figure name {name!r} is not a usable file name; use letters, digits, '_' or '-'")

    def decorator(maker: FigureMaker) -> FigureMaker:
        previous = FIGURES.get(name)
        if previous is not None and _qualified(previous) != _qualified(maker):
            owner = _qualified(previous)
            raise HarnessError(f"figure {name!r} is already registered by {owner}; pick another name")
        FIGURES[name] = maker
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


@register_figure("main_metric_bars")
def main_metric_bars(results: list[dict[str, Any]]) -> Figure | None:
    """Grouped bars: one group per task, one bar per model, height = the task's main metric."""
    if not results:
        return None
    tasks = _first_seen([r["task"] for r in results])
    models = _first_seen([display_name(r) for r in results])
    value = {(display_name(r), r["task"]): _main_value(r) for r in results}
    main = {r["task"]: r["main_metric"] for r in results}
    figure = _new_figure(max(6.0, 1.1 * len(tasks) * max(1.0, len(models) / 3)), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(models)
    for index, model in enumerate(models):
        xs = [t + (index - (len(models) - 1) / 2) * width for t in range(len(tasks))]
        heights = [value.get((model, task), math.nan) for task in tasks]  # a missing run is no bar, not 0
        axes.bar(xs, heights, width=width, label=model)
    axes.set_xticks(range(len(tasks)), [f"{task}\n({main[task]})" for task in tasks])
    axes.set_ylabel("main metric")
    axes.set_title("Main metric per task")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return figure


@register_figure("training_curves")
def training_curves(results: list[dict[str, Any]]) -> Figure | None:
    """Main metric against training step, one subplot per task and one line per training method."""
    # every checkpoint, each once: the chosen checkpoint's second record would repeat its point
    trained = [r for r in results if isinstance(r.get("training"), dict) and not r["training"].get("selected_by")]
    if not trained:
        return None
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
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axes.set_title(task)
        axes.set_xlabel("step")
        axes.set_ylabel(of_task[0]["main_metric"])
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure
