"""Figures of MiniLLM's analyses: the ExAccErr curve, reliability diagrams and ROUGE-L per reference-length bucket.

Registered through `register_figure` like every other figure; each returns None when the store holds no result of
its analysis. The ROUGE-L difference against a baseline (the paper plots MiniLLM minus SFT) is a report-side
comparison: `register_length_baseline(name)` adds the `rougeL_length_gain` figure for the baseline's leaderboard
name, so the same stored runs can be compared against any of them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from harness.reports.plots import _first_seen, _new_figure, display_name, register_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_BUCKET = re.compile(r"rougeL_len_(\d+)_(\d+|inf)")


def _grid(count: int, width: float = 4.5, height: float = 3.6) -> tuple[Figure, int]:
    columns = min(3, count)
    rows = -(-count // columns)
    return _new_figure(width * columns, height * rows), columns


@register_figure("exacc_err_curve")
def exacc_err_curve(results: list[dict[str, Any]]) -> Figure | None:
    """ExAccErr(l) against l, one subplot per task and one line per model."""
    found = [r for r in results if isinstance(r.get("details", {}).get("exacc_err"), dict)]
    if not found:
        return None
    tasks = _first_seen([r["task"] for r in found])
    figure, columns = _grid(len(tasks))
    for index, task in enumerate(tasks):
        axes = figure.add_subplot(-(-len(tasks) // columns), columns, index + 1)
        for result in (r for r in found if r["task"] == task):
            curve = result["details"]["exacc_err"]
            axes.plot(curve["l"], curve["value"], label=display_name(result))
        axes.axhline(0.0, color="grey", linewidth=0.8)
        axes.set_title(f"{task}: exposure bias")
        axes.set_xlabel("generation length l")
        axes.set_ylabel("ExAccErr(l) (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


@register_figure("reliability_diagram")
def reliability_diagram(results: list[dict[str, Any]]) -> Figure | None:
    """Accuracy against mean confidence per bin of the reported ECE's binning, one subplot per (model, task), with
    that ECE in the title."""
    found = [r for r in results if "bins" in (r.get("details", {}).get("reliability") or {})]  # older: not drawn
    if not found:
        return None
    figure, columns = _grid(len(found), 3.6, 3.6)
    for index, result in enumerate(found):
        axes = figure.add_subplot(-(-len(found) // columns), columns, index + 1)
        reliability = result["details"]["reliability"]
        bins = reliability["bins"]
        axes.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["accuracy"] for b in bins],
                 width=[max(b["upper"] - b["lower"], 0.01) for b in bins], edgecolor="black", alpha=0.7,
                 label="accuracy")
        axes.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="black",
                  markersize=3, label="bin mean")
        axes.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
        ece = result["metrics"].get(reliability["metric"])
        binning = reliability["binning"].replace("_", "-")
        suffix = f", ECE {ece:.2f}% ({binning})" if isinstance(ece, int | float) else ""
        axes.set_title(f"{display_name(result)}\n{result['task']}{suffix}", fontsize="small")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence")
        axes.set_ylabel("accuracy")
        axes.legend(fontsize="x-small", loc="upper left")
    figure.tight_layout()
    return figure


def length_buckets(result: dict[str, Any]) -> dict[str, float]:
    """`{"0-5": rougeL, ...}` from a result's `rougeL_len_*` metrics, buckets in increasing length."""
    found = [(match, value) for key, value in result["metrics"].items() if (match := _BUCKET.fullmatch(key))]
    found.sort(key=lambda item: int(item[0].group(1)))
    return {f"{m.group(1)}-{m.group(2)}": float(value) for m, value in found}


def length_bucket_gains(results: list[dict[str, Any]], baseline: str) -> dict[tuple[str, str], dict[str, float]]:
    """(model, task) -> bucket -> ROUGE-L of the model minus the baseline's on the same task and bucket."""
    base = {r["task"]: length_buckets(r) for r in results if display_name(r) == baseline}
    gains = {}
    for result in results:
        model, task = display_name(result), result["task"]
        if model == baseline or task not in base:
            continue
        shared = {b: v - base[task][b] for b, v in length_buckets(result).items() if b in base[task]}
        if shared:
            gains[(model, task)] = shared
    return gains


def _bucket_bars(values: dict[tuple[str, str], dict[str, float]], ylabel: str, title: str) -> Figure | None:
    """Grouped bars per task: buckets on the x axis, one bar per model."""
    if not values:
        return None
    tasks = _first_seen([task for _, task in values])
    figure, columns = _grid(len(tasks))
    for index, task in enumerate(tasks):
        axes = figure.add_subplot(-(-len(tasks) // columns), columns, index + 1)
        models = [model for model, t in values if t == task]
        buckets = _first_seen([b for model in models for b in values[(model, task)]])
        width = 0.8 / len(models)
        for m, model in enumerate(models):
            xs = [i + (m - (len(models) - 1) / 2) * width for i in range(len(buckets))]
            axes.bar(xs, [values[(model, task)].get(b, float("nan")) for b in buckets], width=width, label=model)
        axes.set_xticks(range(len(buckets)), buckets)
        axes.set_xlabel("reference length (words)")
        axes.set_ylabel(ylabel)
        axes.set_title(f"{task}: {title}")
        axes.axhline(0.0, color="grey", linewidth=0.8)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


@register_figure("rougeL_length_buckets")
def rougeL_length_buckets(results: list[dict[str, Any]]) -> Figure | None:
    values = {(display_name(r), r["task"]): length_buckets(r) for r in results}
    return _bucket_bars({key: v for key, v in values.items() if v}, "ROUGE-L", "ROUGE-L per reference length")


def register_length_baseline(baseline: str) -> None:
    """Add (or re-point) the `rougeL_length_gain` figure: every model's ROUGE-L per bucket minus `baseline`'s."""

    @register_figure("rougeL_length_gain")
    def rougeL_length_gain(results: list[dict[str, Any]]) -> Figure | None:
        return _bucket_bars(length_bucket_gains(results, baseline), f"ROUGE-L minus {baseline}",
                            f"gain over {baseline}")
