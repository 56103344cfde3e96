"""Leaderboard: Markdown and self-contained HTML built from every `results.json` under a results root.

A pure function of the stored files: the same store gives the same tables, and no generation time is written.
Unreadable or incomplete files are skipped with one warning line on stderr. Rows are models (`method@step` for
trainer checkpoints); columns are suite scores, then each task's main metric. Each suite scores with its own
aggregate (`harness.registry.Suite`): a plain mean of main metrics appears only when the model has every task
that any stored result lists under that suite, so averages over different task sets never share a column; the
CUGE index is baseline-normalised and may be partial (marked "*"), with a section of per-capability scores.
Rows are sorted by the first suite average (the first task column when no suite is
stored), highest first. A trained method shows one row in the summary (the checkpoint its validation metric chose,
else its last one); its other checkpoints stay in the task tables and the training curves. The HTML page
(`html_page.py`) lays the same tables out per suite with the figures and a sample viewer.
"""

from __future__ import annotations

import fnmatch
import html
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.metrics.stats import format_score, format_value, is_number, metric_value
from harness.registry import SuiteScore, get_suite, mean_of_tasks
from harness.reports.plots import display_name, render_figures, summary_names
from harness.store import atomic_write

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One stored result and where it came from (the samples file sits beside it)."""

    path: Path
    result: dict[str, Any]

    @property
    def name(self) -> str:
        return display_name(self.result)

    @property
    def task(self) -> str:
        return self.result["task"]

    @property
    def main(self) -> float:
        return float(self.result["metrics"][self.result["main_metric"]])

    @property
    def higher_is_better(self) -> bool:
        return bool(self.result.get("higher_is_better", True))


@dataclass(frozen=True)
class Table:
    """Cells as text; for the HTML writer also each cell's number (to sort and to find the best), its stored 95%
    interval, and per column whether higher (True) or lower (False) is better, None for columns that are no score."""

    header: list[str]
    rows: list[list[str]]
    values: list[list[float | None]] = field(default_factory=list)
    higher_is_better: list[bool | None] = field(default_factory=list)
    intervals: list[list[tuple[float, float] | None]] = field(default_factory=list)


def _warn(path: Path, reason: str) -> None:
    print(f"warning: skipping {path}: {reason}", file=sys.stderr)


def _schema_problem(data: Any) -> str | None:
    """Why `data` cannot go on the leaderboard, or None when it can."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if is_number(data.get("schema_version")) and data["schema_version"] > SCHEMA_VERSION:
        return f"schema_version {data['schema_version']} is newer than this harness reads; upgrade harness"
    for key in ("model", "task", "main_metric"):
        if not isinstance(data.get(key), str) or not data[key]:
            return f"missing or non-string {key!r}"
    if not isinstance(data.get("metrics"), dict):
        return "missing 'metrics' object"
    if not is_number(data["metrics"].get(data["main_metric"])):
        return f"main metric {data['main_metric']!r} is missing from 'metrics' or not a number"
    suites = data.get("suites", [])
    if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
        return "'suites' is not a list of names"
    training = data.get("training")
    if training is not None and not (
        isinstance(training, dict) and isinstance(training.get("method"), str)
        and isinstance(training.get("step"), int) and not isinstance(training.get("step"), bool)
        and isinstance(training.get("selected_by", ""), str) and isinstance(training.get("init", ""), str)
    ):
        return ("'training' needs a string 'method', an integer 'step' and, when given, strings 'selected_by' "
                "and 'init'")
    return None


def _read_entry(path: Path) -> Entry | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        _warn(path, f"cannot parse ({error})")
        return None
    problem = _schema_problem(data)
    if problem is not None:
        _warn(path, problem)
        return None
    return Entry(path, data)


def load_entries(root: Path) -> list[Entry]:
    """Every valid result under `root`; for a repeated (model, task) the most recently created one wins."""
    chosen: dict[tuple[str, str], Entry] = {}
    for path in sorted(root.rglob("results.json")):
        entry = _read_entry(path)
        if entry is None:
            continue
        key = (entry.name, entry.task)
        other = chosen.get(key)
        if other is not None:
            newer, older = sorted([other, entry], key=lambda e: str(e.result.get("created", "")))[::-1]
            _warn(older.path, f"{key[0]} on {key[1]} is also stored in {newer.path}, which is newer")
            entry = newer
        chosen[key] = entry
    return list(chosen.values())


COUNT_NAMES = ("num_*", "*_total", "*_distinct")  # metric-name patterns of counts (Dist-4's n-gram counts)


def is_count(name: str, value: Any) -> bool:
    """Counts (integers in the JSON, or integral values named like one) print as integers, not as 127.00."""
    named = any(fnmatch.fnmatchcase(name, pattern) for pattern in COUNT_NAMES)
    return isinstance(value, int) or (named and float(value).is_integer())


def _with_std(metrics: dict[str, Any], name: str) -> str:
    value = metrics.get(name)
    return str(int(value)) if is_number(value) and is_count(name, value) else format_score(metrics, name)


def interval(metrics: dict[str, Any], name: str) -> tuple[float, float] | None:
    """The stored `<name>_ci95`, when it is a pair of numbers."""
    found = metrics.get(f"{name}_ci95")
    if isinstance(found, list) and len(found) == 2 and all(is_number(v) for v in found):
        return float(found[0]), float(found[1])
    return None


@dataclass(frozen=True)
class Board:
    """The resolved layout shared by the Markdown and HTML writers."""

    models: list[str]  # row order
    tasks: list[str]
    suites: dict[str, set[str]]  # suite -> its tasks
    cells: dict[tuple[str, str], Entry]  # (model, task) -> entry

    def suite_score(self, model: str, suite: str) -> SuiteScore | None:
        """The suite's own aggregate over the main metrics of this model's stored tasks of the suite."""
        scores = {task: self.cells[model, task].main for task in self.suites[suite] if (model, task) in self.cells}
        found = get_suite(suite)
        return (found.aggregate if found else mean_of_tasks)(scores, sorted(self.suites[suite]))

    def suite_average(self, model: str, suite: str) -> float | None:
        score = self.suite_score(model, suite)
        return None if score is None else score.value

    def training(self, model: str) -> dict[str, Any] | None:
        training = next(e for (m, _), e in self.cells.items() if m == model).result.get("training")
        return training if isinstance(training, dict) else None

    def method(self, model: str) -> str:
        """The training method of a checkpoint row, else the model's own name."""
        training = self.training(model)
        return training["method"] if training else model

    def groups(self) -> dict[str, list[str]]:
        """Summary row -> the method's other checkpoints (latest step first), in row order."""
        summary = main_models(self)
        others = sorted((m for m in self.models if m not in summary), key=lambda m: -(self.training(m) or {})["step"])
        return {model: [m for m in others if self.method(m) == self.method(model)] for model in summary}


def build_board(entries: list[Entry]) -> Board:
    suites: dict[str, set[str]] = {}
    for entry in entries:
        for suite in entry.result.get("suites", []):
            suites.setdefault(suite, set()).add(entry.task)
    suites = dict(sorted(suites.items()))
    suite_order = list(suites)

    def task_key(task: str) -> tuple[int, str]:
        ranks = [i for i, suite in enumerate(suite_order) if task in suites[suite]]
        return (min(ranks, default=len(suite_order)), task)

    tasks = sorted({entry.task for entry in entries}, key=task_key)
    cells = {(entry.name, entry.task): entry for entry in entries}
    unordered = Board(sorted({entry.name for entry in entries}), tasks, suites, cells)
    return replace(unordered, models=_row_order(unordered))


def _higher_is_better(board: Board, tasks: Iterable[str]) -> bool:
    """Lower-is-better only when every one of `tasks` says so (ECE, losses)."""
    wanted = set(tasks)
    return any(entry.higher_is_better for (_, task), entry in board.cells.items() if task in wanted)


def _sort_tasks(board: Board) -> set[str]:
    return board.suites[next(iter(board.suites))] if board.suites else {board.tasks[0]}


def _row_order(board: Board) -> list[str]:
    sign = -1.0 if _higher_is_better(board, _sort_tasks(board)) else 1.0

    def key(model: str) -> tuple[bool, float, str]:
        if board.suites:
            value = board.suite_average(model, next(iter(board.suites)))
        else:
            entry = board.cells.get((model, board.tasks[0]))
            value = entry.main if entry else None
        missing = value is None or not math.isfinite(value)
        return (missing, 0.0 if missing else sign * value, model)

    return sorted(board.models, key=key)


def _main_name(board: Board, task: str) -> str:
    return next(board.cells[m, task] for m in board.models if (m, task) in board.cells).result["main_metric"]


def _suite_header(suite: str) -> str:
    found = get_suite(suite)
    return f"{suite} {found.aggregate_name if found else 'avg'}"


def _suite_cell(score: SuiteScore | None) -> str:
    return "" if score is None else format_value(score.value) + ("*" if score.partial else "")


def main_models(board: Board) -> list[str]:
    """The rows of the summary: untrained models, and per trained method the checkpoint its validation metric chose
    (else its last one); its other checkpoints stay in the task tables and the training curves."""
    shown = summary_names([entry.result for entry in board.cells.values()])
    return [model for model in board.models if model in shown]


def _task_header(board: Board, task: str) -> str:
    return f"{task} ({_main_name(board, task)}{'' if _higher_is_better(board, [task]) else ', lower is better'})"


def _main_cells(board: Board, model: str, tasks: list[str]) -> tuple[list[str], list[float | None]]:
    entries = [board.cells.get((model, task)) for task in tasks]
    return ([_with_std(e.result["metrics"], e.result["main_metric"]) if e else "" for e in entries],
            [e.main if e else None for e in entries])


def scores_table(board: Board, models: list[str], suites: list[str], tasks: list[str]) -> Table:
    """Model, the suites' scores, then the tasks' main metrics."""
    header = ["Model", *(_suite_header(suite) for suite in suites), *(_task_header(board, task) for task in tasks)]
    rows, values = [], []
    for model in models:
        scores = [board.suite_score(model, suite) for suite in suites]
        texts, numbers = _main_cells(board, model, tasks)
        rows.append([model, *(_suite_cell(score) for score in scores), *texts])
        values.append([None, *(score.value if score else None for score in scores), *numbers])
    better = [None, *(_higher_is_better(board, board.suites[s]) for s in suites),
              *(_higher_is_better(board, [t]) for t in tasks)]
    return Table(header, rows, values, better)


def main_table(board: Board) -> Table:
    return scores_table(board, main_models(board), list(board.suites), board.tasks)


def task_table(board: Board, task: str) -> Table:
    """Every numeric metric of one task; `<name>_stderr` and `<name>_std` fold into its metric's cell."""
    entries = [board.cells[model, task] for model in board.models if (model, task) in board.cells]
    numeric = {name for e in entries for name, value in e.result["metrics"].items() if is_number(value)}
    folded = ("_std", "_stderr")
    shown = sorted(n for n in numeric if not any(n.endswith(s) and n[: -len(s)] in numeric for s in folded))
    main = entries[0].result["main_metric"]
    shown = [main, *(n for n in shown if n != main)]
    rows, values, intervals = [], [], []
    for entry in entries:
        metrics = entry.result["metrics"]
        docs = entry.result.get("num_docs", "")
        rows.append([entry.name, str(docs), *(_with_std(metrics, n) if is_number(metrics.get(n)) else ""
                                              for n in shown)])
        values.append([None, float(docs) if is_number(docs) else None, *(metric_value(metrics, n) for n in shown)])
        intervals.append([None, None, *(interval(metrics, n) for n in shown)])
    higher = entries[0].higher_is_better
    # Only the main metric's direction is stored; the other columns are not ranked.
    return Table(["Model", "docs", *shown], rows, values, [None, None, higher, *([None] * (len(shown) - 1))],
                 intervals)


def _md_cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _intro(board: Board) -> str:
    sort_key = f"the {next(iter(board.suites))} average" if board.suites else board.tasks[0]
    order = "highest" if _higher_is_better(board, _sort_tasks(board)) else "lowest"
    return (f"Main metric per task, sorted by {sort_key} ({order} first). "
            "A suite average is shown only when the model has every task of the suite; "
            "* marks a score over part of its board. Scores are in percent; "
            "± is one standard error over documents (95% intervals in results.json), sd the population standard "
            "deviation of the per-seed means. A trained method's row is the checkpoint its validation metric chose "
            "(else its last one); the task tables and the training curves show every checkpoint.")


def suite_parts_tables(board: Board) -> list[tuple[str, Table]]:
    """For suites whose score has parts (CUGE's capabilities): one table per suite, a row per model."""
    tables = []
    for suite in board.suites:
        scores = {model: board.suite_score(model, suite) for model in board.models}
        parts = sorted({part for score in scores.values() if score for part in score.parts})
        if not parts:
            continue
        kept = [(model, score) for model, score in scores.items() if score is not None]
        rows = [[model, _suite_cell(score), *(format_value(score.parts[p]) if p in score.parts else "" for p in parts)]
                for model, score in kept]
        values = [[None, score.value, *(score.parts.get(p) for p in parts)] for _, score in kept]
        higher = _higher_is_better(board, board.suites[suite])
        tables.append((suite, Table(["Model", _suite_header(suite), *parts], rows, values,
                                    [None, *([higher] * (len(parts) + 1))])))
    return tables


def render_markdown(board: Board) -> str:
    parts = ["# Leaderboard", "", _md_cell(_intro(board)), "", _md_table(main_table(board))]
    for suite, table in suite_parts_tables(board):
        parts += ["", f"## {_md_cell(suite)} by capability", "", _md_table(table)]
    for task in board.tasks:
        parts += ["", f"## {_md_cell(task)}", "", _md_table(task_table(board, task))]
    return "\n".join(parts) + "\n"




def write_leaderboard(root: Path, out_dir: Path | None = None) -> list[Path]:
    """Write `leaderboard.md`, `leaderboard.html` and the figure PNGs for every result under `root`.

    Returns the written paths: the Markdown, the HTML, then one PNG per figure that had something to plot.
    """
    root = Path(root)
    if not root.is_dir():
        raise HarnessError(f"results folder {root} does not exist; pass the folder the runner wrote to")
    entries = load_entries(root)
    if not entries:
        raise HarnessError(f"no readable results.json under {root}; run an evaluation into it first")
    out_dir = Path(out_dir) if out_dir is not None else root
    out_dir.mkdir(parents=True, exist_ok=True)
    board = build_board(entries)
    ordered = [board.cells[m, t] for m in board.models for t in board.tasks if (m, t) in board.cells]
    figures = render_figures([entry.result for entry in ordered], out_dir)
    markdown_path, html_path = out_dir / "leaderboard.md", out_dir / "leaderboard.html"
    atomic_write(markdown_path, render_markdown(board))
    from harness.reports.html_page import render_html  # the page module builds on this one's tables

    atomic_write(html_path, render_html(board, figures))
    return [markdown_path, html_path, *(path for _, path in figures)]
