"""The HTML leaderboard: one offline file laid out as a paper's results section.

Summary of suite scores, then a section per suite (its scores, its capability table where the suite has parts,
each task's table and a sample viewer), then the training curves, the analyses' figures and every run's metadata.
A trained method's other checkpoints sit behind its summary row; each method has one colour in every table and
figure. The best value of a ranked column is highlighted; lower-is-better columns say so.

Everything from the store (model names, metric keys, prompts, predictions) is escaped. The one inline script sorts
tables, opens checkpoint groups and drives the sample viewer; it never parses text as HTML (it clones and shows
elements written here). The Content-Security-Policy allows that script by its hash and nothing else: no other
script, no remote load, so text that slipped past escaping still could not run or call out.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import sys
from pathlib import Path
from typing import Any

from harness.metrics.stats import format_value
from harness.reports.leaderboard import Board, Table, _intro, main_models, scores_table, suite_parts_tables, task_table
from harness.reports.plots import CAPTIONS, method_colours

SAMPLES_PER_TASK = 20  # documents in the sample viewer, per (model, task)
SAMPLE_CHARS = 2000  # few-shot prompts run to pages; the viewer is there to read answers
# Where each figure goes; every other registered figure is one of the analyses.
FIGURE_SECTIONS = {"main_metric_bars": "summary", "training_curves": "training"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; padding: 0 1rem; color: #222; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
td { white-space: nowrap; }
.wide { overflow-x: auto; }  /* a task with many metrics scrolls inside its table, not the page */
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
thead th { background: #f2f2f2; cursor: pointer; }
thead th[aria-sort="ascending"]::after { content: " \\25B2"; }
thead th[aria-sort="descending"]::after { content: " \\25BC"; }
td.best { font-weight: bold; background: #e8f4e8; }
tr.checkpoint td { color: #555; background: #fbfbfb; }
tr.checkpoint td:first-child { padding-left: 1.6rem; }
.swatch { display: inline-block; width: 0.8rem; height: 0.8rem; margin-right: 0.4rem; vertical-align: -0.1rem; }
.lower { font-weight: normal; color: #a33; }
.ci { display: block; font-size: 0.72rem; color: #666; font-weight: normal; }
button.expand { font-size: 0.75rem; margin-left: 0.4rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; } figcaption { font-size: 0.85rem; color: #444; }
.viewer { border: 1px solid #ddd; padding: 0.4rem 0.6rem; margin: 0.8rem 0; }
.viewer summary { cursor: pointer; font-weight: 600; }
.viewer .columns { display: flex; gap: 1rem; } .viewer .column { flex: 1; min-width: 0; }
.sample h4 { margin: 0.5rem 0 0.1rem; font-size: 0.8rem; color: #555; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; padding: 0.4rem; margin: 0; }
.sample table { width: 100%; } .sample td, .sample th { text-align: left; white-space: normal; }
.pool { display: none; }
table.runs td, table.runs th { text-align: left; white-space: normal; vertical-align: top; }
"""

# Sorting: numbers by their data-value, rows without one last; a checkpoint row travels with its summary row.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var down = th.getAttribute("aria-sort") !== "descending";
      table.querySelectorAll("thead th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var tops = rows.filter(function (r) { return !r.dataset.parent; });
      function key(row) {
        var cell = row.cells[column], v = cell.dataset.value;
        return v === undefined ? cell.textContent : parseFloat(v);
      }
      tops.sort(function (a, b) {
        var x = key(a), y = key(b), xs = typeof x === "string", ys = typeof y === "string";
        if (xs !== ys) { return xs ? 1 : -1; }
        var order = xs ? x.localeCompare(y) : x - y;
        return down ? -order : order;
      });
      tops.forEach(function (top) {
        body.appendChild(top);
        rows.filter(function (r) { return r.dataset.parent === top.dataset.group; })
            .forEach(function (r) { body.appendChild(r); });
      });
    });
  });
});
document.querySelectorAll("button.expand").forEach(function (button) {
  button.addEventListener("click", function () {
    var table = button.closest("table"), open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", open ? "true" : "false");
    table.querySelectorAll("tr[data-parent]").forEach(function (row) {
      if (row.dataset.parent === button.dataset.group) { row.hidden = !open; }
    });
  });
});
document.querySelectorAll(".viewer").forEach(function (viewer) {
  var doc = viewer.querySelector("select.doc"), pool = viewer.querySelector(".pool");
  function show() {
    viewer.querySelectorAll(".column").forEach(function (column) {
      var model = column.querySelector("select.model").value, body = column.querySelector(".shown");
      var found = Array.from(pool.children).find(function (s) {
        return s.dataset.model === model && s.dataset.doc === doc.value;
      });
      body.replaceChildren(found ? found.cloneNode(true) : document.createTextNode("no sample of this document"));
    });
  }
  viewer.querySelectorAll("select").forEach(function (s) { s.addEventListener("change", show); });
  viewer.querySelectorAll("button.step").forEach(function (button) {
    button.addEventListener("click", function () {
      var next = doc.selectedIndex + parseInt(button.dataset.step, 10);
      if (next >= 0 && next < doc.options.length) { doc.selectedIndex = next; show(); }
    });
  });
  show();
});
"""


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(kind: str, name: str) -> str:
    """An id safe in HTML and URLs for a section (suite and task names come from the store)."""
    return f"{kind}-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]


class Page:
    """The pieces every section shares: the board, the row groups and the colour of each row's method."""

    def __init__(self, board: Board):
        self.board = board
        self.groups = board.groups()
        self.colours = method_colours([entry.result for entry in board.cells.values()])

    def model_cell(self, model: str, children: int = 0, group: str = "") -> str:
        swatch = f'<span class="swatch" style="background:{self.colours[self.board.method(model)]}"></span>'
        button = (f'<button class="expand" data-group="{group}" aria-expanded="false" '
                  f'title="other checkpoints of this method">+{children} checkpoints</button>' if children else "")
        return f"<td>{swatch}{_e(model)}{button}</td>"

    def table(self, table: Table) -> str:
        """A sortable table whose first column is the model; best values of ranked columns highlighted."""
        lower = [h is False for h in table.higher_is_better] if table.higher_is_better else []
        head = "".join(f"<th>{_e(cell)}" + ('<span class="lower"> (lower is better)</span>' if lower and lower[i]
                                             and "lower is better" not in cell else "") + "</th>"
                       for i, cell in enumerate(table.header))
        rows_by_model = {row[0]: index for index, row in enumerate(table.rows)}
        order: list[tuple[int, str, str]] = []  # (row index, group id, parent group id)
        for number, model in enumerate(m for m in main_models(self.board) if m in rows_by_model):
            group = f"g{number}"
            order.append((rows_by_model[model], group, ""))
            order += [(rows_by_model[m], "", group) for m in self.groups[model] if m in rows_by_model]
        # A checkpoint whose summary row has no result here (another task's table) stands on its own.
        placed = {index for index, _, _ in order}
        order += [(i, f"x{i}", "") for i in range(len(table.rows)) if i not in placed]
        shown = [index for index, _, parent in order if not parent]  # the best of what shows before expanding
        best = [_best(table, column, shown) for column in range(len(table.header))]
        body = []
        for index, group, parent in order:
            row = table.rows[index]
            values = table.values[index] if table.values else [None] * len(row)
            intervals = table.intervals[index] if table.intervals else [None] * len(row)
            children = sum(1 for _, _, p in order if p == group and group)
            cells = [self.model_cell(row[0], children, group)]
            for column, (text, value, ci) in enumerate(zip(row[1:], values[1:], intervals[1:]), 1):
                data = f' data-value="{value!r}"' if value is not None and math.isfinite(value) else ""
                mark = ' class="best"' if not parent and value is not None and value == best[column] else ""
                shown = f'<span class="ci">95% CI [{format_value(ci[0])}, {format_value(ci[1])}]</span>' if ci else ""
                cells.append(f"<td{data}{mark}>{_e(text)}{shown}</td>")
            attributes = (f' class="checkpoint" data-parent="{parent}" hidden' if parent
                          else f' data-group="{group}"')
            body.append(f"<tr{attributes}>{''.join(cells)}</tr>")
        return (f'<div class="wide"><table class="sortable"><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table></div>')

    def viewer(self, task: str) -> str:
        """The first documents of `task` for every model: choose a document and two models to compare."""
        models = [m for m in self.board.models if (m, task) in self.board.cells]
        pool, documents = [], {}
        for model in models:
            for sample in read_samples(self.board.cells[model, task].path.parent / "samples.jsonl"):
                doc = str(sample.get("doc_id", len(documents)))
                documents.setdefault(doc, None)
                pool.append(_sample_html(model, doc, sample))
        if not pool:
            return ""
        summary = [m for m in main_models(self.board) if m in models]
        choices = summary + [m for m in models if m not in summary]

        def column(default: int) -> str:
            options = "".join(f'<option value="{_e(m)}"{" selected" if i == default else ""}>{_e(m)}</option>'
                              for i, m in enumerate(choices))
            return (f'<div class="column"><label>model <select class="model">{options}</select></label>'
                    f'<div class="shown"></div></div>')

        docs = "".join(f'<option value="{_e(d)}">{_e(d)}</option>' for d in documents)
        controls = (f'<label>document <select class="doc">{docs}</select></label> '
                    '<button class="step" data-step="-1">previous</button> '
                    '<button class="step" data-step="1">next</button>')
        return (f'<details class="viewer" data-task="{_e(task)}"><summary>Samples of {_e(task)}: the first '
                f"{len(documents)} documents, every prediction and its scores, two models side by side</summary>"
                f'{controls}<div class="columns">{column(0)}{column(min(1, len(choices) - 1))}</div>'
                f'<div class="pool">{"".join(pool)}</div></details>')


def _best(table: Table, column: int, rows: list[int]) -> float | None:
    higher = table.higher_is_better[column] if table.higher_is_better else None
    values = [table.values[r][column] for r in rows if table.values[r][column] is not None] if table.values else []
    if higher is None or len(values) < 2:
        return None
    return max(values) if higher else min(values)


def read_samples(path: Path, limit: int = SAMPLES_PER_TASK) -> list[dict[str, Any]]:
    """The first `limit` samples of a samples.jsonl; bad lines are left out with a warning."""
    if not path.is_file():
        return []
    samples: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if len(samples) == limit:
                    break
                try:
                    sample = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    print(f"warning: {path} line {number} is not JSON; sample left out", file=sys.stderr)
                    continue
                if isinstance(sample, dict):
                    samples.append(sample)
    except OSError as error:
        print(f"warning: cannot read {path} ({error}); samples left out", file=sys.stderr)
    return samples


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + " …[truncated]"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _sample_html(model: str, doc: str, sample: dict[str, Any]) -> str:
    """Prompt, references, then every prediction with its scores (one score list entry per prediction)."""
    scores = sample.get("scores") if isinstance(sample.get("scores"), dict) else {}
    names = [n for n, v in scores.items() if isinstance(v, list)]
    head = "".join(f"<th>{_e(n)}</th>" for n in ["#", "prediction", *names])
    rows = []
    for index, prediction in enumerate(_as_list(sample.get("predictions", []))):
        values = [scores[n][index] if index < len(scores[n]) else "" for n in names]
        cells = "".join(f"<td>{_e(_score(v))}</td>" for v in values)
        rows.append(f"<tr><td>{index}</td><td><pre>{_e(_text(prediction))}</pre></td>{cells}</tr>")
    references = "".join(f"<pre>{_e(_text(r))}</pre>" for r in _as_list(sample.get("references", [])))
    return (f'<div class="sample" data-model="{_e(model)}" data-doc="{_e(doc)}">'
            f"<h4>prompt</h4><pre>{_e(_text(sample.get('prompt', '')))}</pre><h4>references</h4>{references}"
            f"<h4>predictions</h4><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _score(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figure(name: str, path: Path) -> str:
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    caption = _e(CAPTIONS.get(name, name))
    return f'<figure><img src="{uri}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _suite_sections(page: Page) -> list[str]:
    board, parts, shown = page.board, dict(suite_parts_tables(page.board)), set()
    sections = []
    grouped = [(suite, sorted(tasks, key=board.tasks.index)) for suite, tasks in board.suites.items()]
    loose = [task for task in board.tasks if not any(task in tasks for tasks in board.suites.values())]
    for suite, tasks in [*grouped, *([("other tasks", loose)] if loose else [])]:
        is_suite = suite in board.suites
        out = [f'<section id="{_anchor("suite", suite)}"><h2>{_e(suite)}</h2>']
        out.append(page.table(scores_table(board, board.models, [suite] if is_suite else [], tasks)))
        if suite in parts:
            out += ["<h3>by capability</h3>", page.table(parts[suite])]
        for task in tasks:
            if task in shown:  # a task of two suites is laid out under the first
                out.append(f'<p><a href="#{_anchor("task", task)}">{_e(task)}</a>: see above.</p>')
                continue
            shown.add(task)
            out += [f'<h3 id="{_anchor("task", task)}">{_e(task)}</h3>', page.table(task_table(board, task)),
                    page.viewer(task)]
        sections.append("".join(out) + "</section>")
    return sections


def _runs_section(board: Board) -> str:
    """Where every number came from: the weights, the resolved settings, the versions, when and how long."""
    head = "".join(f"<th>{h}</th>" for h in ("Model", "task", "weights", "created", "wall time", "versions",
                                             "settings"))
    rows = []
    for model in board.models:
        for task in board.tasks:
            entry = board.cells.get((model, task))
            if entry is None:
                continue
            result = entry.result
            seconds = result.get("wall_seconds")
            versions = result.get("versions") if isinstance(result.get("versions"), dict) else {}
            config = json.dumps(result.get("config", {}), indent=1, sort_keys=True, ensure_ascii=False)
            rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in (
                model, task, str(result.get("model_identity", ""))[:16], result.get("created", ""),
                f"{seconds:.1f} s" if isinstance(seconds, int | float) else "",
                ", ".join(f"{k} {v}" for k, v in versions.items()))) +
                f"<td><details><summary>config</summary><pre>{_e(config)}</pre></details></td></tr>")
    return (f'<section id="runs"><h2>Runs</h2><details><summary>Every result ({len(rows)}) with its weights digest, '
            "creation date, wall time, package versions and resolved settings</summary>"
            f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></details>'
            "</section>")


def render_html(board: Board, figures: list[tuple[str, Path]]) -> str:
    page = Page(board)
    placed = {section: [_figure(n, p) for n, p in figures if FIGURE_SECTIONS.get(n, "analyses") == section]
              for section in ("summary", "training", "analyses")}
    loose = [t for t in board.tasks if not any(t in tasks for tasks in board.suites.values())]
    summary_table = scores_table(board, board.models, list(board.suites), loose if board.suites else board.tasks)
    nav = ['<a href="#summary">summary</a>', *(f'<a href="#{_anchor("suite", s)}">{_e(s)}</a>' for s in board.suites),
           *(['<a href="#' + _anchor("suite", "other tasks") + '">other tasks</a>'] if loose else []),
           *(f'<a href="#{section}">{section}</a>' for section in ("training", "analyses") if placed[section]),
           '<a href="#runs">runs</a>']
    parts = ["<h1>Leaderboard</h1>", f"<nav>{''.join(nav)}</nav>",
             f'<section id="summary"><h2>Summary</h2><p>{_e(_intro(board))} Click a column to sort; '
             "the best value of a ranked column is in bold.</p>", page.table(summary_table), *placed["summary"],
             "</section>", *_suite_sections(page)]
    if placed["training"]:
        parts += ['<section id="training"><h2>Training curves</h2>', *placed["training"], "</section>"]
    if placed["analyses"]:
        parts += ['<section id="analyses"><h2>Analyses</h2>', *placed["analyses"], "</section>"]
    parts.append(_runs_section(board))
    head = (f'<meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{_csp()}">'
            f"<title>Leaderboard</title><style>{_CSS}</style>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>\n{body}\n'
            f"<script>{_SCRIPT}</script>\n</body></html>\n")
