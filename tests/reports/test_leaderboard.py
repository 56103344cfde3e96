"""Leaderboard tests on a small results store written here: tables, escaping, figures, and bad files."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.reports import plots, register_figure, write_leaderboard

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert(1)</script>"


def write_result(root: Path, folder: str, task: str, metrics: dict, *, model: str | None = None,
                 suites: tuple[str, ...] = ("instruct",), training: dict | None = None,
                 created: str = "2026-11-26T01:02:03Z", samples: list[dict] | None = None) -> Path:
    run = root / folder / task
    run.mkdir(parents=True)
    record = {"schema_version": 1, "task": task, "suites": list(suites), "model": model or folder,
              "model_path": f"/models/{folder}", "model_identity": "ab" * 8, "main_metric": "rougeL",
              "metrics": metrics, "num_docs": 500, "config": {}, "versions": {"harness": "0.1.0"},
              "created": created}
    if training is not None:
        record["training"] = training
    (run / "results.json").write_text(json.dumps(record))
    if samples is not None:
        (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return run


def sample(doc_id: int, prediction: str, prompt: str = "Write a poem.") -> dict:
    return {"doc_id": doc_id, "prompt": prompt, "references": ["A reference poem.", "Another."],
            "predictions": [prediction, "second try"], "scores": {"rougeL": [0.3, 0.1]}}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    hostile = [sample(0, f"ignore {XSS} this", prompt='<img src="http://evil.example/x.png"> & more'),
               sample(1, "fine"), sample(2, "also fine"), sample(3, "FOURTH-SAMPLE")]
    write_result(root, "teacher", "dolly",
                 {"rougeL": 25.13, "rougeL_std": 0.31, "rougeL_stderr": 0.45, "rougeL_ci95": [24.25, 26.01],
                  "exact_match": 1.2, "gen_length": 54.3},
                 samples=hostile)
    write_result(root, "teacher", "selfinst", {"rougeL": 20.01})
    write_result(root, "sft", "dolly", {"rougeL": 22.0, "exact_match": 0.5})
    write_result(root, "sft", "selfinst", {"rougeL": 24.5})
    write_result(root, "student", "dolly", {"rougeL": 18.5})  # no selfinst: no instruct average
    (root / "broken" / "dolly").mkdir(parents=True)
    (root / "broken" / "dolly" / "results.json").write_text("{not json")
    (root / "nokeys" / "dolly").mkdir(parents=True)
    (root / "nokeys" / "dolly" / "results.json").write_text(json.dumps({"task": "dolly", "model": "nokeys"}))
    return root


def table_after(markdown: str, heading: str) -> list[list[str]]:
    """Cells of the first Markdown table after `heading`, header row first, separator dropped."""
    lines = markdown[markdown.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return [rows[0], *rows[2:]]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100


def test_main_table_values_std_suite_average_and_order(store: Path, capsys: pytest.CaptureFixture) -> None:
    written = write_leaderboard(store)
    assert written == [store / "leaderboard.md", store / "leaderboard.html", store / "leaderboard_main.png"]
    header, *rows = table_after((store / "leaderboard.md").read_text(), "# Leaderboard")
    assert header == ["Model", "instruct avg", "dolly (rougeL)", "selfinst (rougeL)"]
    # Sorted by the suite average (sft 23.25 > teacher 22.57), not by dolly, where teacher leads.
    assert rows == [["sft", "23.25", "22.00", "24.50"],
                    ["teacher", "22.57", "25.13 ± 0.45 (sd 0.31)", "20.01"],
                    ["student", "", "18.50", ""]]
    err = capsys.readouterr().err
    assert "broken" in err and "nokeys" in err and err.count("warning:") == 2


def test_task_table_lists_every_metric_with_std_folded(store: Path) -> None:
    write_leaderboard(store)
    header, *rows = table_after((store / "leaderboard.md").read_text(), "## dolly")
    assert header == ["Model", "docs", "rougeL", "exact_match", "gen_length"]
    assert rows[1] == ["teacher", "500", "25.13 ± 0.45 (sd 0.31)", "1.20", "54.30"]
    assert rows[0] == ["sft", "500", "22.00", "0.50", ""]
    assert [row[0] for row in rows] == ["sft", "teacher", "student"]


def test_without_suites_rows_sort_by_first_task(tmp_path: Path) -> None:
    write_result(tmp_path, "a", "dolly", {"rougeL": 10.0}, suites=())
    write_result(tmp_path, "b", "dolly", {"rougeL": 30.0}, suites=())
    write_result(tmp_path, "c", "vicuna", {"rougeL": 50.0}, suites=())
    header, *rows = table_after((write_leaderboard(tmp_path)[0]).read_text(), "# Leaderboard")
    assert header == ["Model", "dolly (rougeL)", "vicuna (rougeL)"]
    assert [row[0] for row in rows] == ["b", "a", "c"]


def test_html_is_escaped_self_contained_and_embeds_the_chart(store: Path) -> None:
    from harness.reports.html_page import _SCRIPT

    write_leaderboard(store)
    page = (store / "leaderboard.html").read_text()
    # One script, ours, allowed by its hash alone; everything from the store is escaped.
    assert page.lower().count("<script") == 1 and f"<script>{_SCRIPT}</script>" in page
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page and "default-src 'none'" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=&quot;http://evil.example/x.png&quot;&gt; &amp; more" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(uris[0]) == (store / "leaderboard_main.png").read_bytes()
    assert_png(store / "leaderboard_main.png")
    # The viewer holds every prediction and reference of the first documents, with their scores.
    assert "A reference poem." in page and "Another." in page and "second try" in page
    assert "FOURTH-SAMPLE" in page and page.count('data-model="teacher" data-doc=') == 4
    assert "25.13 ± 0.45 (sd 0.31)" in page and "23.25" in page
    assert '25.13 ± 0.45 (sd 0.31)<span class="ci">95% CI [24.25, 26.01]</span>' in page  # the stored interval
    # The caption is a sentence, not the registry key.
    assert "<figcaption>Main metric of every task, one panel per suite" in page


def test_best_values_are_marked_and_counts_print_as_integers(tmp_path: Path) -> None:
    write_result(tmp_path, "a", "calibration_sst2", {"ece": 0.30, "num_len_0_5": 127.0, "dist4_total": 9.0},
                 suites=("calibration",))
    write_result(tmp_path, "b", "calibration_sst2", {"ece": 0.05, "num_len_0_5": 12.0, "dist4_total": 8.0},
                 suites=("calibration",))
    for folder in ("a", "b"):
        path = tmp_path / folder / "calibration_sst2" / "results.json"
        path.write_text(path.read_text().replace('"main_metric": "rougeL"',
                                                 '"main_metric": "ece", "higher_is_better": false'))
    markdown_path, html_path, _ = write_leaderboard(tmp_path)
    header, *rows = table_after(markdown_path.read_text(), "## calibration_sst2")
    assert header == ["Model", "docs", "ece", "dist4_total", "num_len_0_5"]
    assert rows[0] == ["b", "500", "0.05", "8", "12"]
    page = html_path.read_text()
    assert '<td data-value="0.05" class="best">0.05</td>' in page  # lower is better: 0.05 is the best ECE
    assert '<td data-value="127.0">127</td>' in page  # counts are never ranked
    assert '<span class="lower"> (lower is better)</span>' in page


def test_training_checkpoints_are_named_and_plotted(tmp_path: Path) -> None:
    root, out = tmp_path / "runs", tmp_path / "report"
    write_result(root, "teacher", "dolly", {"rougeL": 25.0})
    for step, score in [(100, 15.0), (200, 19.0)]:
        for method in ("minillm", "sft"):
            write_result(root, f"{method}-{step}", "dolly", {"rougeL": score + (method == "minillm")},
                         model="student", training={"method": method, "step": step})
    written = write_leaderboard(root, out)
    assert out / "training_curves.png" in written
    assert_png(out / "training_curves.png")
    page = (out / "leaderboard.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and 'alt="Test main metric of every checkpoint' in page
    markdown = (out / "leaderboard.md").read_text()
    names = [row[0] for row in table_after(markdown, "# Leaderboard")[1:]]
    assert names == ["teacher", "minillm@200", "sft@200"]  # a method's last checkpoint, when none was chosen
    assert [row[0] for row in table_after(markdown, "## dolly")[1:]] == [
        "teacher", "minillm@200", "sft@200", "minillm@100", "sft@100"]
    # In the HTML the earlier checkpoint sits, hidden, right behind its method's row.
    rows = re.findall(r'<tr( class="checkpoint" data-parent="(g\d)" hidden| data-group="(g\d)")><td><span '
                      r'class="swatch" style="background:(#[0-9a-f]{6})"></span>([^<]+)', page[:page.index("</table>")])
    assert [(row[1] or row[2], row[4]) for row in rows] == [
        ("g0", "teacher"), ("g1", "minillm@200"), ("g1", "minillm@100"), ("g2", "sft@200"), ("g2", "sft@100")]
    colours = {name.split("@")[0]: colour for *_, colour, name in rows}
    assert len(set(colours.values())) == 3 and rows[1][3] == rows[2][3]  # one colour per method
    assert not (root / "leaderboard.md").exists()  # out_dir was given, so the store stays untouched

    for folder in ("minillm-100", "minillm-200", "sft-100", "sft-200"):
        (root / folder / "dolly" / "results.json").unlink()
    written = write_leaderboard(root, out)
    assert written == [out / "leaderboard.md", out / "leaderboard.html", out / "leaderboard_main.png"]
    assert not (out / "training_curves.png").exists()  # the stale plot from the first run is gone
    assert "training_curves" not in (out / "leaderboard.html").read_text()


def test_the_checkpoint_chosen_by_validation_is_the_methods_row(tmp_path: Path) -> None:
    root, out = tmp_path / "runs", tmp_path / "report"
    for step, score in [(100, 30.0), (200, 19.0)]:  # the later checkpoint scores lower on test
        write_result(root, f"minillm-{step}", "dolly", {"rougeL": score}, model="student",
                     training={"method": "minillm", "step": step})
    write_result(root, "minillm-chosen", "dolly", {"rougeL": 19.0}, model="student",
                 training={"method": "minillm", "step": 200, "selected_by": "valid_rougeL"})
    write_leaderboard(root, out)
    markdown = (out / "leaderboard.md").read_text()
    names = [row[0] for row in table_after(markdown, "# Leaderboard")[1:]]
    assert names == ["minillm (@200, by valid_rougeL)"]  # not the better test score at step 100
    assert {"minillm@100", "minillm@200"} <= {row[0] for row in table_after(markdown, "## dolly")[1:]}
    assert "population standard deviation of the per-seed means" in markdown


def test_repeated_model_and_task_keeps_the_newest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_result(tmp_path / "old", "teacher", "dolly", {"rougeL": 1.0}, suites=(),
                 created="2026-01-01T00:00:00Z")
    write_result(tmp_path / "new", "teacher", "dolly", {"rougeL": 2.0}, suites=(),
                 created="2026-02-01T00:00:00Z")
    rows = table_after(write_leaderboard(tmp_path)[0].read_text(), "# Leaderboard")[1:]
    assert rows == [["teacher", "2.00"]]
    assert str(tmp_path / "old") in capsys.readouterr().err


def test_markdown_and_html_are_a_pure_function_of_the_store(store: Path, tmp_path: Path) -> None:
    first = [path.read_bytes() for path in write_leaderboard(store, tmp_path / "a")]
    second = [path.read_bytes() for path in write_leaderboard(store, tmp_path / "b")]
    assert first == second


def test_registered_figure_is_saved_and_embedded(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "FIGURES", dict(plots.FIGURES))

    @register_figure("model_count")
    def model_count(results: list[dict]):
        from matplotlib.figure import Figure

        figure = Figure(figsize=(3, 3))
        figure.add_subplot().bar([0], [len({r["model"] for r in results})])
        return figure

    written = write_leaderboard(store)
    assert store / "model_count.png" in written
    assert_png(store / "model_count.png")
    assert 'alt="model_count"' in (store / "leaderboard.html").read_text()  # no docstring: the name
    with pytest.raises(HarnessError, match="already registered"):
        register_figure("model_count")(lambda results: None)
    with pytest.raises(HarnessError, match="file name"):
        register_figure("../escape")


def test_empty_or_missing_store_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="does not exist"):
        write_leaderboard(tmp_path / "nowhere")
    (tmp_path / "x" / "dolly").mkdir(parents=True)
    (tmp_path / "x" / "dolly" / "results.json").write_text("[]")
    with pytest.raises(HarnessError, match="no readable results.json"):
        write_leaderboard(tmp_path)


def test_importing_reports_does_not_import_matplotlib() -> None:
    code = "import sys, harness.reports; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_names_and_metric_keys_from_the_store_are_escaped(tmp_path: Path) -> None:
    write_result(tmp_path, "m", "dolly", {"rougeL": 1.0, "<i>odd|key</i>": 2.0}, model=XSS,
                 suites=("<b>s</b>",))
    markdown_path, html_path, _ = write_leaderboard(tmp_path)
    page = html_path.read_text()
    assert page.count("<script") == 1 and "<i>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;s&lt;/b&gt; avg" in page
    header = table_after(markdown_path.read_text(), "## dolly")[0]
    assert header == ["Model", "docs", "rougeL", "&lt;i&gt;odd\\|key&lt;/i&gt;"]


def test_lower_is_better_tasks_sort_ascending_and_say_so(tmp_path: Path):
    root = tmp_path / "runs"
    for model, value in (("good", 0.05), ("bad", 0.30), ("middling", 0.12)):
        folder = write_result(root, model, "calibration_sst2", {"ece": value}, suites=("calibration",))
        record = json.loads((folder / "results.json").read_text())
        record.update(main_metric="ece", higher_is_better=False)
        (folder / "results.json").write_text(json.dumps(record))
    markdown = write_leaderboard(root)[0].read_text()
    rows = [line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("| ") and "0." in line]
    assert rows[:3] == ["good", "middling", "bad"]
    assert "lowest first" in markdown and "lower is better" in markdown


def test_cuge_suite_scores_with_its_index_and_capabilities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUGE's own aggregate: baseline-normalised, partial over the lite board, with a per-capability section."""
    from harness.metrics import cuge

    monkeypatch.setattr(cuge, "MT5_SMALL_BASELINES", {"ccpm": 80.0, "c3": 40.0, "math23k": 10.0})
    monkeypatch.setattr("harness.tasks.cuge.MT5_SMALL_BASELINES", cuge.MT5_SMALL_BASELINES)
    root = tmp_path / "runs"
    for task, value in (("cuge_ccpm", 90.0), ("cuge_c3", 60.0), ("cuge_math23k", 20.0)):
        write_result(root, "model", task, {"rougeL": value}, suites=("cuge_lite",))
    write_result(root, "other", "cuge_ccpm", {"rougeL": 80.0}, suites=("cuge_lite",))
    markdown = write_leaderboard(root)[0].read_text()
    main = table_after(markdown, "# Leaderboard")
    assert main[0][1] == "cuge_lite index"
    expected = (112.5 + 150.0 + 200.0) / 3  # ratios x100, one dataset per capability; partial: lite board lacks 4
    assert main[1][:2] == ["model", f"{expected:.2f}*"]
    assert main[2][:2] == ["other", "100.00*"]  # scored over what it has, not padded with zeros
    parts = table_after(markdown, "## cuge_lite by capability")
    assert parts[0] == ["Model", "cuge_lite index", "language_understanding_discourse",
                        "language_understanding_word_sentence", "mathematical_reasoning"]
    assert parts[1] == ["model", f"{expected:.2f}*", "150.00", "112.50", "200.00"]


def test_scores_print_with_enough_digits():
    from harness.metrics.stats import format_score

    assert format_score({"acc": 0.475, "acc_stderr": 0.0354}, "acc") == "0.475 ± 0.0354"  # not 0.47 ± 0.04
    assert format_score({"acc": 47.5, "acc_stderr": 3.54, "acc_ci95": [40.6, 54.4]}, "acc") == "47.50 ± 3.54"
    assert format_score({"ece": 0.0}, "ece") == "0.00" and format_score({}, "ece") == "n/a"


def test_figures_colour_by_method_with_error_bars_and_reference_lines() -> None:
    def result(model: str, task: str, value: float, training: dict | None = None) -> dict:
        record = {"model": model, "task": task, "suites": ["instruct"], "main_metric": "rougeL",
                  "metrics": {"rougeL": value, "rougeL_stderr": 0.5}}
        return {**record, "training": training} if training else record

    results = [result("teacher", "dolly", 40.0),
               result("student", "dolly", 20.0, {"method": "sft-init", "step": 600, "selected_by": "valid_loss"}),
               result("student", "dolly", 18.0, {"method": "sft-init", "step": 300}),
               *(result("student", "dolly", 20.0 + step / 100, {"method": "minillm", "step": step, "init": "sft-init"})
                 for step in (100, 200))]
    colours = plots.method_colours(results)
    bars = plots.main_metric_bars(results).axes[0]
    # The summary only: teacher, the chosen sft-init checkpoint, minillm's last one, each in its method's colour.
    assert [patch.get_height() for patch in bars.patches] == [40.0, 20.0, 22.0]
    assert [matplotlib_hex(patch.get_facecolor()) for patch in bars.patches] == [
        colours["teacher"], colours["sft-init"], colours["minillm"]]
    whiskers = [line for collection in bars.collections for line in collection.get_segments()]
    assert [round(segment[1][1] - segment[0][1], 6) for segment in whiskers] == [1.0, 1.0, 1.0]  # ± one stderr
    curves = plots.training_curves(results).axes[0]
    lines = {line.get_label(): line for line in curves.lines}
    assert list(lines["minillm"].get_xdata()) == [100, 200]  # the initialisation is a reference, not a curve
    assert list(lines["sft-init (initialisation)"].get_ydata()) == [20.0, 20.0]
    assert lines["sft-init (initialisation)"].get_linestyle() == ":"
    assert list(lines["teacher"].get_ydata()) == [40.0, 40.0] and lines["teacher"].get_linestyle() == "--"
    assert matplotlib_hex(lines["minillm"].get_color()) == colours["minillm"]


def matplotlib_hex(colour) -> str:
    from matplotlib.colors import to_hex

    return to_hex(colour)
