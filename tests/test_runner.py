"""The runner, results store and generation cache, driven by a scripted backend (canned answers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from harness import runner
from harness.backends.base import Backend, Completion, LoglikelihoodResult
from harness.errors import HarnessError
from harness.models import ModelRef
from harness.runner import EvalConfig, evaluate

ROWS = [
    {"instruction": "Say hi", "input": "", "output": "hello there friend", "prompt": "Say hi<n>### Response:<n>"},
    {"instruction": "Count", "input": "", "output": "one two three", "prompt": "Count to three<n>"},
    {"instruction": "Name", "input": "", "output": ["a cat", "the dog"], "prompt": "Name a pet<n>"},
]


class ScriptedBackend(Backend):
    """Answers are a pure function of (prompt, seed); every generated request is counted."""

    def __init__(self, model: str, **options):
        self.name, self.identity, self.path = "scripted", f"weights-of-{model}", model
        self.generated = 0

    def generate(self, requests, progress=True):
        self.generated += len(requests)
        return [Completion(f" hello {r.prompt.split()[0].lower()} {r.seed % 3} ", 4, "stop") for r in requests]

    def loglikelihood(self, requests, progress=True):
        return [LoglikelihoodResult(-float(len(continuation)), False) for _, continuation in requests]

    def token_logprobs(self, requests, progress=True, move_whitespace=True):
        return [[-1.0] * len(continuation.split()) for _, continuation in requests]


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data" / "dolly"
    folder.mkdir(parents=True)
    (folder / "valid.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return tmp_path / "data"


@pytest.fixture
def backends(monkeypatch):
    made: list[ScriptedBackend] = []

    def fake_load(model, backend="hf", **options):
        made.append(ScriptedBackend(model))
        return made[-1]

    def fake_resolve(model, trust_remote_code=False, architecture=True):  # what the runner knows before loading
        return ModelRef(path=Path(model), name="scripted", identity=f"weights-of-{model}")

    monkeypatch.setattr(runner, "load", fake_load)
    monkeypatch.setattr(runner, "resolve", fake_resolve)
    return made


def run(data_dir, tmp_path, **changes):
    settings = dict(model="m1", tasks="dolly", data_dir=str(data_dir), output_dir=str(tmp_path / "runs"),
                    progress=False)
    return evaluate(EvalConfig(**{**settings, **changes}))


def test_results_and_samples_follow_the_protocol(data_dir, tmp_path, backends):
    [path] = run(data_dir, tmp_path)
    record = json.loads(path.read_text())
    assert record["task"] == "dolly" and record["model"] == "scripted" and "instruct" in record["suites"]
    assert record["model_identity"] == "weights-of-m1" and record["versions"]["torch"]
    assert record["config"]["tasks"] == "dolly" and record["num_docs"] == 3
    samples = [json.loads(line) for line in (path.parent / "samples.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == [0, 1, 2]
    assert samples[0]["prompt"] == "Say hi\n### Response:\n"  # `<n>` in the released prompts is a newline
    assert samples[2]["references"] == ["a cat", "the dog"]
    assert len(samples[0]["predictions"]) == 5 and samples[0]["predictions"][0] == "hello say 1"  # seed 10, stripped
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    per_seed = []
    for seed in (10, 20, 30, 40, 50):
        values = []
        for row in ROWS:
            refs = row["output"] if isinstance(row["output"], list) else [row["output"]]
            prediction = f"hello {row['prompt'].split()[0].lower()} {seed % 3}"
            values.append(max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in refs))
        per_seed.append(100 * sum(values) / len(values))
    assert record["metrics"]["rougeL"] == pytest.approx(sum(per_seed) / 5)
    assert record["metrics"]["gen_length"] == 4.0 and record["metrics"]["exact_match"] == 0.0
    assert record["metrics"]["reference_loss"] == pytest.approx(1.0)


def test_second_run_is_served_from_the_cache_without_loading_the_model(data_dir, tmp_path, backends):
    first = json.loads(run(data_dir, tmp_path)[0].read_text())["metrics"]
    assert len(backends) == 1 and backends[0].generated == 15 and "reference_loss" in first
    second = json.loads(run(data_dir, tmp_path)[0].read_text())["metrics"]
    assert len(backends) == 1  # generations and reference-loss log-probs all came from the cache
    assert first == second


def test_other_weights_never_get_cached_answers(data_dir, tmp_path, backends):
    run(data_dir, tmp_path, name="a")
    run(data_dir, tmp_path, name="b", model="m2")
    assert backends[1].generated == 15


def test_greedy_asks_once_per_document_and_seeds_override(data_dir, tmp_path, backends):
    run(data_dir, tmp_path, gen_kwargs={"do_sample": False})
    assert backends[0].generated == 3
    [path] = run(data_dir, tmp_path, seeds=(1, 2), overwrite=True)
    samples = (path.parent / "samples.jsonl").read_text().splitlines()
    assert len(json.loads(samples[0])["predictions"]) == 2


def test_name_clash_with_other_weights_is_refused_and_keeps_results(data_dir, tmp_path, backends):
    [path] = run(data_dir, tmp_path)
    before = path.read_text()
    with pytest.raises(HarnessError, match="--name"):
        run(data_dir, tmp_path, model="m2")
    assert path.read_text() == before
    run(data_dir, tmp_path, model="m2", overwrite=True)
    assert json.loads(path.read_text())["model_identity"] == "weights-of-m2"


def test_bad_inputs_fail_before_any_work(data_dir, tmp_path, backends):
    [path] = run(data_dir, tmp_path)
    before = path.read_text()
    with pytest.raises(HarnessError, match="gen-kwargs"):
        run(data_dir, tmp_path, gen_kwargs={"temprature": 0.5})
    with pytest.raises(HarnessError, match="unknown task"):
        run(data_dir, tmp_path, tasks="dolly,nope")
    bad = data_dir / "dolly" / "valid.jsonl"
    bad.write_text(bad.read_text() + '{"prompt": 1}\n')
    with pytest.raises(HarnessError, match="row 3"):
        run(data_dir, tmp_path)
    bad.write_text("{not json\n")
    with pytest.raises(HarnessError, match="valid.jsonl:1"):
        run(data_dir, tmp_path)
    assert path.read_text() == before and len(backends) == 1


def test_missing_data_names_the_file_and_the_fix(tmp_path, backends):
    with pytest.raises(HarnessError, match=r"dolly/valid.jsonl.*--data-dir"):
        run(tmp_path / "nowhere", tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"gen_kwargs": {"temperature": -1}}, "temperature must be a number in"),
    ({"gen_kwargs": {"top_p": 2.5}}, r"top_p must be a number in \(0, 1\]"),
    ({"gen_kwargs": {"top_k": -3}}, "top_k must be a whole number >= 0"),
    ({"gen_kwargs": {"max_new_tokens": 0}}, "max_new_tokens must be a whole number >= 1"),
    ({"gen_kwargs": {"max_new_tokens": 1.5}}, "max_new_tokens must be a whole number"),
    ({"gen_kwargs": {"do_sample": "yes"}}, "do_sample must be true or false"),
    ({"gen_kwargs": {"stop": [""]}}, "stop must be a non-empty string"),
    ({"samples": 0}, "--samples must be a whole number >= 1"),
    ({"batch_size": 0}, "--batch-size must be a whole number >= 1"),
    ({"limit": -1}, "--limit must be a whole number >= 1"),
    ({"seeds": ()}, "--seeds must list at least one seed"),
    ({"seeds": (10, 20, 10)}, "repeats a seed"),
    ({"device": "gpu0"}, "--device must be"),
    ({"dtype": "float8"}, "--dtype must be one of"),
    ({"backend": "tgi"}, "--backend must be one of"),
    ({"name": "../elsewhere"}, "--name '../elsewhere' must be one plain folder name"),
    ({"name": "/tmp/abs"}, "must be one plain folder name"),
    ({"backend_options": {"gpu_memory_utilization": 1.5}}, "--gpu-memory-utilization must be a number in"),
])
def test_every_setting_is_checked_before_the_model_loads(changes, message, data_dir, tmp_path, backends):
    [path] = run(data_dir, tmp_path)
    before = path.read_text()
    with pytest.raises(HarnessError, match=message):
        run(data_dir, tmp_path, **changes)
    assert path.read_text() == before and len(backends) == 1


def test_yaml_values_of_the_wrong_type_are_refused(tmp_path):
    from harness.cli import build_parser, eval_config_from_args

    for text, message in [("batch_size: many\n", "batch_size must be a whole number"),
                          ("limit: 1.5\n", "limit must be a whole number"),
                          ("progress: 3\n", "progress must be true or false"),
                          ("seeds: [1, x]\n", r"seeds\[1\] must be a whole number"),
                          ("gen_kwargs: 3\n", "gen_kwargs must be a mapping")]:
        (tmp_path / "eval.yaml").write_text(text)
        args = build_parser().parse_args(["eval", "--config", str(tmp_path / "eval.yaml")])
        with pytest.raises(HarnessError, match=message):
            eval_config_from_args(args)


def test_an_output_dir_that_is_a_file_fails_before_the_model_loads(data_dir, tmp_path, backends):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(HarnessError, match="--output-dir .* is not a folder"):
        run(data_dir, tmp_path)
    assert not backends


def test_a_result_folder_in_use_by_another_run_is_refused(data_dir, tmp_path, backends):
    from harness import store

    held = store.FolderLock(tmp_path / "runs" / "scripted" / "dolly")
    with pytest.raises(HarnessError, match="being written by another run"):
        run(data_dir, tmp_path)
    held.close()
    assert run(data_dir, tmp_path)


def test_samples_of_other_weights_are_never_replaced(data_dir, tmp_path, backends):
    [path] = run(data_dir, tmp_path)
    path.unlink()  # as if killed after samples.jsonl was written
    samples = (path.parent / "samples.jsonl").read_text()
    with pytest.raises(HarnessError, match="--name"):
        run(data_dir, tmp_path, model="m2")
    assert (path.parent / "samples.jsonl").read_text() == samples


def test_ownership_is_checked_again_when_writing(data_dir, tmp_path, backends, monkeypatch):
    """A writer that takes no lock (an older harness) stores other weights' results while this run works."""
    folder = tmp_path / "runs" / "scripted" / "dolly"

    class Interleaved(ScriptedBackend):
        def generate(self, requests, progress=True):
            (folder / "results.json").write_text(json.dumps({"model_identity": "weights-of-other"}))
            return super().generate(requests, progress)

    monkeypatch.setattr(runner, "load", lambda model, backend="hf", **options: Interleaved(model))
    with pytest.raises(HarnessError, match="other weights"):
        run(data_dir, tmp_path)
    assert json.loads((folder / "results.json").read_text()) == {"model_identity": "weights-of-other"}
    assert not (folder / "samples.jsonl").exists()


def _cache(tmp_path):
    return tmp_path / "runs" / ".cache" / "generations.sqlite"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_cache_is_set_aside_and_recomputed(damage, data_dir, tmp_path, backends, capsys):
    first = json.loads(run(data_dir, tmp_path)[0].read_text())["metrics"]
    cache = _cache(tmp_path)
    if damage == "garbage":
        cache.write_bytes(b"\x00garbage" * 1000)
    else:
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    capsys.readouterr()
    again = json.loads(run(data_dir, tmp_path)[0].read_text())["metrics"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and "moved it to generations.sqlite.damaged-" in warnings[0]
    assert again == first and backends[1].generated == 15
    assert list(cache.parent.glob("generations.sqlite.damaged-*"))


def test_one_unreadable_cache_row_is_dropped_and_regenerated(data_dir, tmp_path, backends, capsys):
    import sqlite3

    first = json.loads(run(data_dir, tmp_path)[0].read_text())["metrics"]
    with sqlite3.connect(_cache(tmp_path)) as connection:
        connection.execute("UPDATE generations SET value = '{broken' WHERE rowid = 1")
    again = json.loads(run(data_dir, tmp_path)[0].read_text())["metrics"]
    assert again == first and backends[1].generated == 1
    assert "1 unreadable row(s)" in capsys.readouterr().err


def test_each_document_samples_from_its_own_seed_reproducibly(tiny, tmp_path):
    """Two documents with the same prompt differ under one run seed; a rerun, batched otherwise, repeats them."""
    folder = tmp_path / "data" / "dolly"
    folder.mkdir(parents=True)
    row = {"instruction": "x", "input": "", "output": "a b", "prompt": "Name three colours.<n>### Response:<n>"}
    (folder / "valid.jsonl").write_text((json.dumps(row) + "\n") * 4)

    def predictions(output: str, batch_size: int) -> list[str]:
        (path,) = evaluate(EvalConfig(model=str(tiny.teacher), tasks="dolly", data_dir=str(tmp_path / "data"),
                                      output_dir=str(tmp_path / output), seeds=(10,), batch_size=batch_size,
                                      gen_kwargs={"max_new_tokens": 24}, progress=False))
        lines = (path.parent / "samples.jsonl").read_text().splitlines()
        return [json.loads(line)["predictions"][0] for line in lines]

    first = predictions("a", batch_size=4)
    assert len(set(first)) > 1, first  # with one bare seed for every request all four were the same sample
    assert predictions("b", batch_size=1) == first
    assert runner.request_seed(10, 0) == runner.request_seed(10, 0) != runner.request_seed(10, 1)


def test_written_files_are_as_readable_as_the_umask_allows(tmp_path):
    """Results and reports are written through a temporary file, whose owner-only mode must not stick."""
    from harness import store

    umask = os.umask(0)
    os.umask(umask)
    store.write_json(tmp_path / "results.json", {"a": 1})
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_checkpoint_is_digested_once_per_run(random_model, data_dir, tmp_path, monkeypatch):
    """The runner resolves the model once, before any data loads, and the backend it opens reuses that."""
    from harness import models

    digested = []
    digest = models.model_identity
    monkeypatch.setattr(models, "model_identity", lambda folder: digested.append(folder) or digest(folder))
    (path,) = run(data_dir, tmp_path, model=str(random_model), limit=1, gen_kwargs={"max_new_tokens": 2})
    assert json.loads(path.read_text())["model_identity"] == digest(random_model)
    assert digested == [random_model]
