"""The S-NI ICL loader on task files written here in the official schema, its prompt, and its scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.metrics.text import exact_match, rouge_l
from harness.runner import EvalConfig, evaluate, request_seed
from tests.test_runner import backends  # noqa: F401  (fixture: a scripted backend as `load`)

TITLES = {
    "Definition": ["Write a title for the\nstory."],
    "Positive Examples": [{"input": f"Story {n}:\nthe cat sat.", "output": f"Cat {n}", "explanation": "short"}
                          for n in (1, 2, 3)] + [{"input": "unused", "output": "fourth", "explanation": ""}],
    "Negative Examples": [{"input": "x", "output": "y", "explanation": "bad"}],
    "Instances": [{"id": "t1-0", "input": "A dog ran.", "output": ["Dog runs", "The dog"]},
                  {"id": "t1-1", "input": "It rained.", "output": ["Rain"]}],
}
YES_NO = {
    "Definition": ["Answer Yes or No."],
    "Positive Examples": [{"input": "Is fire hot?", "output": "Yes", "explanation": ""},
                          {"input": "Is ice hot?", "output": "No", "explanation": ""}],
    "Instances": [{"id": "t2-0", "input": "Is snow cold?", "output": ["Yes"]},
                  {"id": "t2-1", "input": "Is lava cold?", "output": ["No"]}],
}


def write_tasks(root: Path, tasks: dict[str, dict], selection: dict | None = None) -> Path:
    folder = root / "sni_icl" / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in tasks.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    if selection is not None:
        (root / "sni_icl" / "picl_tasks.json").write_text(json.dumps(selection))
    return root


def run(data: Path, tmp_path: Path, **changes) -> tuple[dict, list[dict]]:
    settings = dict(model="m1", tasks="sni_icl", data_dir=str(data), output_dir=str(tmp_path / "runs"),
                    progress=False, seeds=(1, 2))
    [path] = evaluate(EvalConfig(**{**settings, **changes}))
    samples = [json.loads(line) for line in (path.parent / "samples.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), samples


def test_prompts_scores_and_macro_mean_over_tasks(tmp_path, backends):  # noqa: F811
    data = write_tasks(tmp_path / "data", {"task1_titles": TITLES, "task2_yes_no": YES_NO, "task3_unlisted": TITLES},
                       {"tasks": ["task2_yes_no", "task1_titles", "task9_absent"], "yes_no_tasks": ["task2_yes_no"]})
    record, samples = run(data, tmp_path)
    assert [s["group"] for s in samples] == ["task2_yes_no"] * 2 + ["task1_titles"] * 2
    assert samples[2]["prompt"] == (
        "Write a title for the story.\n\n"
        "Positive Example 1- input: Story 1: the cat sat. output: Cat 1\n\n"
        "Positive Example 2- input: Story 2: the cat sat. output: Cat 2\n\n"
        "Positive Example 3- input: Story 3: the cat sat. output: Cat 3\n\n"
        "Now complete the following example- input: A dog ran. output:")
    assert samples[0]["prompt"].endswith("Positive Example 2- input: Is ice hot? output: No\n\n"
                                         "Now complete the following example- input: Is snow cold? output:")
    # yes/no by option loss (the scripted log-prob is minus the option's length: " No" beats " Yes")
    assert samples[0]["predictions"] == ["No", "No"] and samples[0]["annotations"]["option_logprobs"][0] == [-3, -4]
    assert samples[1]["predictions"] == ["No", "No"] and samples[1]["scores"]["exact_match"] == [1.0, 1.0]
    # generation: the scripted answer " hello <first prompt word> <request seed % 3> ", stripped; each request's
    # seed comes from (run seed, document), the document counted among the task's generation documents
    def expected(document: int) -> list[str]:
        return [f"hello write {request_seed(seed, document) % 3}" for seed in (1, 2)]

    assert samples[2]["predictions"] == expected(0) and samples[3]["predictions"] == expected(1)
    titles = [rouge_l(p, TITLES["Instances"][i]["output"]) for i in (0, 1) for p in expected(i)]
    per_task = record["details"]["per_task"]
    assert per_task["task2_yes_no"] == {"rougeL": 50.0, "exact_match": 50.0, "num_docs": 2}
    assert per_task["task1_titles"]["rougeL"] == pytest.approx(100 * sum(titles) / 4)
    assert per_task["task1_titles"]["exact_match"] == 0.0 == exact_match("hello write 1", ["Rain"])
    assert record["metrics"]["rougeL"] == pytest.approx((50.0 + per_task["task1_titles"]["rougeL"]) / 2)
    assert record["metrics"]["exact_match"] == pytest.approx(25.0) and record["main_metric"] == "rougeL"


def test_without_a_selection_every_task_file_runs(tmp_path, backends):  # noqa: F811
    data = write_tasks(tmp_path / "data", {"task1_titles": TITLES, "task2_yes_no": YES_NO})
    record, samples = run(data, tmp_path)
    assert sorted(record["details"]["per_task"]) == ["task1_titles", "task2_yes_no"]
    assert all(len(s["predictions"]) == 2 and "option_logprobs" not in s.get("annotations", {}) for s in samples)


@pytest.mark.parametrize(("change", "problem"), [
    (lambda task: task.pop("Definition"), "`Definition` is missing"),
    (lambda task: task.pop("Instances"), "`Instances` is missing"),
    (lambda task: task["Instances"][1].update(output="Rain"), "instance 1: `output` must be a non-empty list"),
    (lambda task: task["Positive Examples"][0].pop("output"), "`Positive Examples` must be a list"),
])
def test_a_task_file_that_breaks_the_schema_is_named(tmp_path, backends, change, problem):  # noqa: F811
    data = write_tasks(tmp_path / "data", {"task1_titles": TITLES})
    run(data, tmp_path)
    results = tmp_path / "runs" / "scripted" / "sni_icl" / "results.json"
    before = results.read_text()
    broken = json.loads(json.dumps(TITLES))
    change(broken)
    write_tasks(data, {"task1_titles": broken})
    with pytest.raises(HarnessError, match=rf"task1_titles.json does not follow the S-NI task schema: {problem}"):
        run(data, tmp_path)
    assert results.read_text() == before


def test_the_real_folder_runs_picl_tasks_that_are_present(shared_data, tmp_path, backends):  # noqa: F811
    record, samples = run(shared_data, tmp_path, limit=None)
    assert len(record["details"]["per_task"]) == 21  # of PICL's 105 tasks, the 21 with a file in shared/data
    assert all(n <= 100 for n in (v["num_docs"] for v in record["details"]["per_task"].values()))
