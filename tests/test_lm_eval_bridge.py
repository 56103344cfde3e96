"""lm-eval tasks through our runner and backend give what lm-eval's own HFLM gives on the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.lm_eval_bridge import HarnessLM, plain_metrics, sampling_from_lm_eval
from harness.models import ModelRef
from harness.reports.leaderboard import load_entries
from harness.runner import EvalConfig, evaluate

MC_YAML = """\
task: bridge_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

GEN_YAML = """\
task: bridge_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: [" 7"]
  max_gen_toks: 10
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    mc = write_jsonl(folder / "mc.jsonl", [
        {"question": f"The number {i} plus {i + 1} is", "choices": [f" {2 * i + 1}", f" {i}", " pear apple", " fig."],
         "answer": i % 4} for i in range(10)])
    gen = write_jsonl(folder / "gen.jsonl", [
        {"question": f"Sort these words: pear apple fig. The number {i} plus", "answer": f" {i + 1} is"}
        for i in range(6)])
    (folder / "bridge_mc.yaml").write_text(MC_YAML.format(data=mc))
    (folder / "bridge_gen.yaml").write_text(GEN_YAML.format(data=gen))
    return folder


@pytest.fixture(scope="module")
def peer(random_model, task_dir):
    """lm-eval's own answer: HFLM on the same checkpoint and tasks."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = HFLM(pretrained=str(random_model), batch_size=4, device="cpu", dtype="float32")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    output = simple_evaluate(model, tasks=["bridge_mc", "bridge_gen"], task_manager=manager)
    return model, output


@pytest.fixture(scope="module")
def ours(random_model, task_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    config = EvalConfig(model=str(random_model), tasks="lm_eval:bridge_mc,lm_eval:bridge_gen", data_dir=str(task_dir),
                        output_dir=str(root), name="random", device="cpu", batch_size=4, progress=False)
    written = evaluate(config)
    assert [path.parent.name for path in written] == ["lm_eval_bridge_mc", "lm_eval_bridge_gen"]
    return root / "random"


def read(folder: Path) -> tuple[dict, list[dict]]:
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return json.loads((folder / "results.json").read_text()), samples


@pytest.mark.slow
def test_multiple_choice_matches_hflm(ours, peer):
    result, samples = read(ours / "lm_eval_bridge_mc")
    expected = peer[1]["results"]["bridge_mc"]
    assert result["task"] == "lm_eval:bridge_mc" and result["main_metric"] == "acc"
    acc, stderr = 100 * expected["acc,none"], 100 * expected["acc_stderr,none"]  # lm-eval's, in percent
    metrics = result["metrics"]
    assert set(metrics) == {"acc", "acc_stderr", "acc_ci95"}
    assert (metrics["acc"], metrics["acc_stderr"]) == pytest.approx((acc, stderr))
    assert metrics["acc_ci95"] == pytest.approx([acc - 1.96 * stderr, acc + 1.96 * stderr], abs=1e-2)
    assert result["num_docs"] == len(samples) == 10
    for sample, logged in zip(samples, peer[1]["samples"]["bridge_mc"]):
        assert sample["doc_id"] == logged["doc_id"] and sample["prompt"] == logged["arguments"][0][0]
        assert sample["predictions"][0]["logprobs"] == pytest.approx([r[0] for r in logged["filtered_resps"]],
                                                                      abs=1e-4)
        assert sample["scores"] == {"acc": [logged["acc"]]}
    assert samples[1]["references"] == ["1"]  # row 1: answer index 1 is the option " 1"
    board = {(entry.task, entry.main) for entry in load_entries(ours.parent)}
    assert any(task == "lm_eval:bridge_mc" and main == pytest.approx(acc) for task, main in board)


@pytest.mark.slow
def test_generation_matches_hflm(ours, peer):
    result, samples = read(ours / "lm_eval_bridge_gen")
    expected = peer[1]["results"]["bridge_gen"]
    assert result["main_metric"] == "exact_match"
    assert result["metrics"]["exact_match"] == pytest.approx(100 * expected["exact_match,none"])
    predictions = [sample["predictions"][0] for sample in samples]
    assert predictions == [logged["filtered_resps"][0] for logged in peer[1]["samples"]["bridge_gen"]]
    assert any(predictions) and samples[2]["references"] == [" 3 is"]


@pytest.mark.slow
def test_rolling_loglikelihood_matches_hflm(random_model, peer):
    from lm_eval.api.instance import Instance

    from harness.backends import load

    texts = ["The number 3 plus 4 is 7.", "Sort these words: pear apple fig.", "pear"]
    requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]
    backend = load(str(random_model), device="cpu", batch_size=2)
    ours = HarnessLM(backend).loglikelihood_rolling(requests)
    assert ours == pytest.approx(peer[0].loglikelihood_rolling(requests), abs=1e-4)


@pytest.mark.parametrize(("gen_kwargs", "expected"), [
    ({"until": ["\n"], "max_gen_toks": 5}, {"stop": ("\n",), "max_new_tokens": 5, "temperature": 0.0}),
    ({"until": "Q:", "temperature": 0.7}, {"stop": ("Q:",), "temperature": 0.0}),  # HFLM: no do_sample, greedy
    ({"do_sample": True, "temperature": 0.7, "top_p": 0.9}, {"temperature": 0.7, "top_p": 0.9}),
    ({"do_sample": True}, {"temperature": 1.0, "max_new_tokens": 256}),
])
def test_generation_kwargs_map_to_settings(gen_kwargs, expected):
    settings = sampling_from_lm_eval(gen_kwargs)
    assert {key: getattr(settings, key) for key in expected} == expected


def test_unsupported_generation_kwarg_is_a_user_error():
    with pytest.raises(HarnessError, match="num_beams"):
        sampling_from_lm_eval({"num_beams": 4})


def test_metric_keys_are_plain_numbers():
    raw = {"alias": "x", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,strict-match": 1,
           "sample_len": 3, "f1,none": float("nan")}
    assert plain_metrics(raw) == {"acc": 0.5, "exact_match_strict-match": 1.0}


def test_include_folder_is_searched_before_lm_eval_registry(task_dir, tmp_path):
    from harness.lm_eval_bridge import lm_eval_task, task_manager

    with pytest.raises(HarnessError, match="is not a folder"):
        lm_eval_task("bridge_mc", tmp_path / "missing")
    # A task defined in the folder must not pay for indexing lm-eval's thousands of built-in YAML files.
    assert sorted(task_manager("bridge_mc", task_dir).all_tasks) == ["bridge_gen", "bridge_mc"]


FUNCTION_YAML = """\
include: base.yaml
task: bridge_fn
process_docs: !function utils.process_docs
"""
PLANTED_CODE = """\
from pathlib import Path

Path(__file__).with_name("ran").write_text("planted code ran")


def process_docs(dataset):
    return dataset
"""


def test_folder_python_runs_only_with_trust_remote_code(task_dir, tmp_path):
    from harness.lm_eval_bridge import lm_eval_task

    (tmp_path / "base.yaml").write_text(MC_YAML.format(data=task_dir / "mc.jsonl").replace("bridge_mc", "base"))
    (tmp_path / "bridge_fn.yaml").write_text(FUNCTION_YAML)
    (tmp_path / "utils.py").write_text(PLANTED_CODE)
    with pytest.raises(HarnessError, match="--trust-remote-code") as error:
        lm_eval_task("bridge_fn", tmp_path)
    assert "bridge_fn.yaml" in str(error.value)
    assert not (tmp_path / "ran").exists()
    # the include chain counts too: a task whose base YAML calls Python
    (tmp_path / "base.yaml").write_text(MC_YAML.format(data=task_dir / "mc.jsonl").replace("bridge_mc", "base")
                                        + "process_docs: !function utils.process_docs\n")
    (tmp_path / "bridge_inc.yaml").write_text("include: base.yaml\ntask: bridge_inc\n")
    with pytest.raises(HarnessError, match="base.yaml uses !function"):
        lm_eval_task("bridge_inc", tmp_path)
    assert not (tmp_path / "ran").exists()
    assert lm_eval_task("bridge_fn", tmp_path, trust_remote_code=True).main_metric == "acc"
    assert (tmp_path / "ran").exists()  # said so: the code runs


def test_folder_task_named_like_a_registry_task_is_refused(task_dir, tmp_path):
    from harness.lm_eval_bridge import lm_eval_task

    (tmp_path / "arc_easy.yaml").write_text(MC_YAML.format(data=task_dir / "mc.jsonl").replace("bridge_mc", "arc_easy"))
    with pytest.raises(HarnessError, match="also a task of lm-eval's registry: rename it"):
        lm_eval_task("arc_easy", tmp_path)


class CountingBackend:
    """A real backend with every request it answers recorded, to see what reaches the model."""

    def __init__(self, inner):
        self.inner, self.identity, self.name = inner, inner.identity, inner.name
        self.chunk_size = 4
        self.generated: list = []
        self.scored: list = []

    def generate(self, requests, progress=True):
        self.generated += requests
        return self.inner.generate(requests, progress=False)

    def loglikelihood(self, requests, progress=True):
        self.scored += requests
        return self.inner.loglikelihood(requests, progress=False)

    def token_logprobs(self, requests, progress=True, move_whitespace=True):
        return self.inner.token_logprobs(requests, progress=False, move_whitespace=move_whitespace)

    def close(self):
        pass


@pytest.fixture(scope="module")
def real_backend(random_model):
    from harness.backends import load

    with load(str(random_model), device="cpu", batch_size=4, dtype="float32") as backend:
        yield backend


@pytest.fixture
def counting(monkeypatch, real_backend):
    from harness import runner

    made: list[CountingBackend] = []

    def load(model, backend="hf", **options):
        made.append(CountingBackend(real_backend))
        return made[-1]

    def resolve(model, trust_remote_code=False, architecture=True):
        return ModelRef(real_backend.path, real_backend.name, real_backend.identity)

    monkeypatch.setattr(runner, "load", load)
    monkeypatch.setattr(runner, "resolve", resolve)
    return made


def bridged(task_dir, root, **changes):
    config = EvalConfig(model="unused", tasks="lm_eval:bridge_mc,lm_eval:bridge_gen", data_dir=str(task_dir),
                        output_dir=str(root), name="random", progress=False, **changes)
    return [json.loads(path.read_text())["metrics"] for path in evaluate(config)]


def test_lm_eval_requests_go_through_the_cache(task_dir, tmp_path, counting, monkeypatch):
    monkeypatch.setattr("harness.runner.check_local", lambda model, trust_remote_code=False, architecture=True: None)
    first = bridged(task_dir, tmp_path)
    assert len(counting[0].scored) == 40 and len(counting[0].generated) == 6  # 10 docs x 4 options, 6 docs
    second = bridged(task_dir, tmp_path, overwrite=True)
    assert len(counting) == 1  # a rerun recomputes nothing and loads no model
    assert first == second


def test_samples_seeds_and_gen_kwargs_reach_lm_eval_requests(task_dir, tmp_path, counting, monkeypatch):
    monkeypatch.setattr("harness.runner.check_local", lambda model, trust_remote_code=False, architecture=True: None)
    bridged(task_dir, tmp_path, samples=3, seeds=(5,), gen_kwargs={"temperature": 0.7, "max_new_tokens": 3})
    generated = counting[0].generated
    assert len(generated) == 6 * 3  # lm-eval's `repeats` from --samples
    assert sorted({request.seed for request in generated}) == [5, 6, 7]
    assert {(r.settings.temperature, r.settings.max_new_tokens, r.settings.stop) for r in generated} == {
        (0.7, 3, (" 7",))}  # the task's own `until` stays
    with pytest.raises(HarnessError, match="unknown --gen-kwargs key 'temprature'"):
        bridged(task_dir, tmp_path, gen_kwargs={"temprature": 0.7})


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_an_lm_eval_task_without_recomputing(random_model, tmp_path):
    from test_cli import harness, kill_after_cached  # the CLI's own kill -9 check, on an lm-eval task

    folder = tmp_path / "tasks"
    folder.mkdir()
    rows = write_jsonl(folder / "long.jsonl", [{"question": f"Count from {i}:", "answer": f" {i + 1}"}
                                              for i in range(40)])
    (folder / "bridge_long.yaml").write_text(GEN_YAML.format(data=rows).replace("bridge_gen", "bridge_long")
                                             .replace("max_gen_toks: 10", "max_gen_toks: 16").replace('[" 7"]', "[]"))
    args = ["eval", "--model", str(random_model), "--tasks", "lm_eval:bridge_long", "--data-dir", str(folder),
            "--batch-size", "1", "--name", "rand"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    done_before = kill_after_cached(args, killed, 8)
    assert 0 < done_before < 40, "the kill must land in the middle of the run"
    resumed = harness(*args, "--output-dir", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {done_before} of 40 generations found in the cache" in resumed.stderr
    uninterrupted = harness(*args, "--output-dir", str(clean))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    (result, samples), (clean_result, clean_samples) = (read(root / "rand" / "lm_eval_bridge_long")
                                                        for root in (killed, clean))
    assert samples == clean_samples and result["metrics"] == clean_result["metrics"]
