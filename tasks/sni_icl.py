"""Super-NaturalInstructions in-context learning (`sni_icl`), PICL's S-NI protocol.

Protocol (PICL, Gu et al. 2023, S-NI evaluation; shared/specs/eval-protocols.md section 3): each test task's
definition, then its positive examples as "Positive Example 1- input: ... output: ...", then "Now complete the
following example- input: ... output:"; newlines inside every field flattened to spaces; at most 100 instances per
task. Generation samples with top-p 0.9 and stops at the first newline; ROUGE-L (rouge_score's rougeL with the
Porter stemmer) and exact match, max over the references, x100. The yes/no tasks are scored by option loss instead:
the likeliest of the task's label set (every output of its instances and positive examples) after the prompt.
Results: the macro mean over tasks of each metric (main: ROUGE-L) and every task's scores in `details.per_task`.

Data: a folder of task files in the official S-NI schema, `sni_icl/tasks/<task>.json` (`Definition`, `Positive
Examples` with input/output, `Instances` with id/input and a list of output strings), and optionally
`sni_icl/picl_tasks.json` (`{"tasks": [...], "yes_no_tasks": [...]}`) choosing the tasks; without it every task
file runs. Listed tasks without a file are skipped (shared/data holds 28 of the 119 test tasks, 21 of PICL's 105);
`details.per_task` names every task that ran.
Differences from the reference code: at most three positive examples are shown (S-NI tasks have 2-3; a few have
more); five seeds (10..50) reported as mean over tasks of the mean over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.backends.base import SamplingSettings
from harness.data import read_text
from harness.errors import HarnessError
from harness.metrics.text import exact_match, rouge_l
from harness.registry import register_task
from harness.task import ChoicePrediction, DataSource, Doc, Task, group_mean, per_group
from harness.tasks.icl import collapse

MAX_INSTANCES = 100
MAX_POSITIVE_EXAMPLES = 3
SAMPLING = SamplingSettings(max_new_tokens=128, temperature=1.0, top_p=0.9, stop=("\n",))
SEEDS = (10, 20, 30, 40, 50)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, str) for item in value)


def read_task_file(path: Path, yes_no: bool) -> list[Doc]:
    """The instances of one S-NI task file, each carrying its task's definition and positive examples."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise HarnessError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    problem = _schema_problem(data)
    if problem:
        raise HarnessError(f"{path} does not follow the S-NI task schema: {problem}")
    definition = data["Definition"]
    examples = [{"input": e["input"], "output": e["output"]}
                for e in data.get("Positive Examples", [])[:MAX_POSITIVE_EXAMPLES]]
    instances = data["Instances"][:MAX_INSTANCES]
    labels = sorted({o for i in instances for o in i["output"]} | {e["output"] for e in examples}) if yes_no else []
    return [{"task": path.stem, "definition": definition if isinstance(definition, str) else definition[0],
             "examples": examples, "id": instance.get("id", f"{path.stem}-{n}"), "input": instance["input"],
             "output": instance["output"], "options": labels}
            for n, instance in enumerate(instances)]


def _schema_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "the file holds no JSON object"
    definition = data.get("Definition")
    if not (isinstance(definition, str) or _strings(definition)):
        return "`Definition` is missing or not a string (or a list of strings)"
    examples = data.get("Positive Examples", [])
    if not isinstance(examples, list) or not all(
            isinstance(e, dict) and isinstance(e.get("input"), str) and isinstance(e.get("output"), str)
            for e in examples):
        return "`Positive Examples` must be a list of objects with string `input` and `output`"
    instances = data.get("Instances")
    if not isinstance(instances, list) or not instances:
        return "`Instances` is missing or empty"
    for n, instance in enumerate(instances):
        if not isinstance(instance, dict) or not isinstance(instance.get("input"), str):
            return f"instance {n} has no string `input`"
        if not _strings(instance.get("output")):
            return f"instance {n}: `output` must be a non-empty list of strings"
    return None


def read_task_folder(folder: Path) -> list[Doc]:
    """Every instance of the chosen tasks: those of `picl_tasks.json` beside the folder, else every task file."""
    selection = folder.parent / "picl_tasks.json"
    if selection.is_file():
        chosen = json.loads(read_text(selection))
        names, yes_no = list(chosen.get("tasks", [])), set(chosen.get("yes_no_tasks", []))
    else:
        names, yes_no = sorted(path.stem for path in folder.glob("*.json")), set()
    present = [name for name in names if (folder / f"{name}.json").is_file()]
    if not present:
        raise HarnessError(f"{folder} holds none of the chosen S-NI task files (<task>.json)")
    return [row for name in present for row in read_task_file(folder / f"{name}.json", name in yes_no)]


def prompt(doc: Doc) -> str:
    shown = [f"Positive Example {n}- input: {collapse(e['input'])} output: {collapse(e['output'])}"
             for n, e in enumerate(doc["examples"], start=1)]
    query = f"Now complete the following example- input: {collapse(doc['input'])} output:"
    return "\n\n".join([collapse(doc["definition"]), *shown, query])


def score(doc: Doc, prediction: str | ChoicePrediction) -> dict[str, float]:
    text = prediction.text if isinstance(prediction, ChoicePrediction) else prediction
    return {"rougeL": rouge_l(text, doc["output"]), "exact_match": exact_match(text, doc["output"])}


def per_task(samples: list[dict[str, Any]]) -> dict[str, Any]:
    rouge, match = per_group(samples, "rougeL"), per_group(samples, "exact_match")
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample["group"]] = counts.get(sample["group"], 0) + 1
    return {"per_task": {task: {"rougeL": rouge[task], "exact_match": match[task], "num_docs": counts[task]}
                         for task in rouge}}


@register_task("sni_icl", suites=("icl",))
def sni_icl() -> Task:
    return Task(
        name="sni_icl",
        description="Super-NaturalInstructions test tasks with their definitions and positive examples (PICL)",
        data=DataSource(local_file="sni_icl/tasks", reader=read_task_folder),
        prompt=prompt,
        references=lambda doc: list(doc["output"]),
        scorer=score,
        metrics=(group_mean("rougeL"), group_mean("exact_match")),
        main_metric="rougeL",
        sampling=SAMPLING,
        seeds=SEEDS,
        choices=lambda doc: [f" {label}" for label in doc["options"]],
        group=lambda doc: doc["task"],
        details=per_task,
    )
