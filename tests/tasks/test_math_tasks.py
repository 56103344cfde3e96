"""The math reasoning suite: gold answers, scoring, the avg@k / pass@k / maj@k aggregation on hand-made records, the
chat-template prompt, and an end-to-end `harness eval --tasks math` over a few rows of each real data set."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.metrics.math import majority_vote, math_equal, math_reward, verify_completions
from harness.registry import expand, get_task
from harness.tasks import math as math_tasks

SUITE = ["gsm8k", "math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench"]


def record(extracted: list[str | None], correct: list[int]) -> dict:
    """One document's samples.jsonl record, as the runner writes it for a math task."""
    return {"scores": {"correct": [float(c) for c in correct]}, "annotations": {"extracted": extracted}}


# ----- aggregation -----------------------------------------------------------------------------------------------


def test_one_correct_of_four_gives_the_unbiased_pass_at_k():
    metrics = math_tasks.avg_and_pass_at_k([record(["1", "2", "3", "4"], [0, 0, 1, 0])])
    values = {name: value for name, value in metrics.items() if not name.endswith(("_stderr", "_ci95"))}
    assert values == pytest.approx({"avg@4": 25.0, "num_samples": 4.0, "pass@1": 25.0, "pass@2": 50.0,
                                    "pass@4": 100.0})
    assert metrics["pass@1_stderr"] == 0.0  # one problem: no spread over documents


def test_avg_at_k_averages_problems_and_equals_pass_at_1():
    samples = [record(["a"] * 4, [0, 0, 1, 0]), record(["b"] * 4, [1, 1, 1, 1]), record(["c"] * 4, [0, 0, 0, 0])]
    metrics = math_tasks.avg_and_pass_at_k(samples)
    assert metrics["avg@4"] == pytest.approx((25 + 100 + 0) / 3)
    assert metrics["pass@1"] == pytest.approx(metrics["avg@4"])
    assert metrics["pass@2"] == pytest.approx((50 + 100 + 0) / 3)
    stderr = statistics.stdev([25, 100, 0]) / math.sqrt(3)  # over problems, of each problem's avg@4
    assert metrics["avg@4_stderr"] == pytest.approx(stderr) and metrics["pass@1_stderr"] == pytest.approx(stderr)
    low, high = metrics["pass@1_ci95"]
    assert (low + high) / 2 == pytest.approx(metrics["pass@1"]) and high - low == pytest.approx(2 * 1.96 * stderr,
                                                                                              rel=1e-3)


@pytest.mark.parametrize(("n", "ks"), [(1, [1]), (2, [1, 2]), (5, [1, 2, 4, 5]), (32, [1, 2, 4, 8, 16, 32])])
def test_pass_at_k_is_reported_at_powers_of_two_and_at_n(n, ks):
    assert math_tasks.pass_ks(n) == ks


MAJORITY_CASES = [
    # (extracted answers of one problem, gold)
    (["1/2", "0.5", "3", "3", "3"], "1/2"),  # two equivalent answers lose to three identical ones
    (["\\frac{1}{2}", "0.5", "3"], "0.5"),  # equivalent answers vote together
    (["4", "5"], "5"),  # a tie goes to the earliest answer
    (["5", "4"], "5"),
    ([None, "7", "", "7"], "7"),  # missing and empty answers do not vote
    ([None, None], "7"),
    (["(x+1)^2", "2", "x^2+2x+1", "2"], "x^2 + 2x + 1"),  # symbolic equivalence, decided by math-verify
]


def test_majority_vote_matches_the_verifier_reference_one_by_one():
    samples = [record(answers, [a is not None and math_equal(gold, a) for a in answers])
               for answers, gold in MAJORITY_CASES]
    expected = [majority_vote(answers, gold) for answers, gold in MAJORITY_CASES]
    assert expected == [False, True, False, True, True, False, True]
    assert math_tasks.majority_correct(samples) == expected
    found = math_tasks.majority_at_k(samples[2:4])
    assert found["maj@2"] == pytest.approx(50.0) and found["maj@2_stderr"] == pytest.approx(50.0)  # one of two


# ----- gold answers and scoring ----------------------------------------------------------------------------------


def test_gold_answers_follow_each_data_set_schema():
    assert math_tasks.gsm8k_answer({"answer": "Step <<2*3=6>>6\n#### 1,234"}) == "1234"
    assert math_tasks.answer_field({"answer": 27.0}) == "27"  # AMC stores answers as floats
    assert math_tasks.answer_field({"answer": "025"}) == "025"
    assert math_tasks.minerva_answer({"solution": "so $s=\\boxed{1.6}$ cm. Final: 2"}) == "1.6"
    assert math_tasks.minerva_answer({"answer": "1.6"}) == "1.6"  # the hub copy's column
    assert math_tasks.olympiad_answer({"final_answer": ["$69$,$84$"]}) == "$69$,$84$"
    with pytest.raises(ValueError, match="boxed"):
        math_tasks.minerva_answer({"solution": "the answer is 3"})


def test_scores_mark_correct_answers_and_fallback_extractions():
    golds = ["0.5", "18", "18", "3", "x^2+2x+1", "18"]
    completions = ["so \\boxed{\\frac{1}{2}}", "the answer is 18", "I get \\boxed{17}, then 18", "no idea",
                   "expanding, \\boxed{(x+1)^2}", "it is item18"]  # math-verify reads no answer in the last
    task = get_task("math500")
    scores = task.score_many([({"answer": gold}, text) for gold, text in zip(golds, completions)])
    assert [s["correct"] for s in scores] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # the boxed 17 wins over a later 18
    assert [s["fallback"] for s in scores] == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    methods = [task.annotate({"answer": gold}, text)["method"] for gold, text in zip(golds, completions)]
    assert methods == ["boxed", "math_verify", "boxed", "none", "math_verify", "last_number"]
    assert math_tasks.fallback_rate([{"scores": {"fallback": [s["fallback"] for s in scores]}}])[
        "fallback_rate"] == pytest.approx(100 / 6)


def test_defaults_sample_32_times_on_aime_and_amc_and_decode_greedily_elsewhere():
    assert expand("math") == SUITE
    for name in SUITE:
        task = get_task(name)
        if name in ("aime24", "aime25", "amc23"):
            assert (len(task.seeds), task.sampling.temperature, task.sampling.top_p) == (32, 0.6, 0.95)
        else:
            assert task.seeds == (0,) and task.sampling.greedy
        assert task.sampling.max_new_tokens == 2048
        assert task.prompt({"problem": " 1+1? ", "question": " 1+1? "}).endswith("within \\boxed{}.")


# ----- chat template and end to end ------------------------------------------------------------------------------


CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"


@pytest.fixture(scope="module")
def chat_model(random_model, tmp_path_factory) -> Path:
    """The random model with a chat template in its tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat-model") / "model"
    shutil.copytree(random_model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def test_chat_prompt_wraps_a_user_turn_and_refuses_a_model_without_template(chat_model, random_model):
    from harness.backends import load

    with load(str(chat_model), backend="hf", device="cpu") as backend:
        assert backend.chat_prompt("What is 2+2?") == "<|user|>What is 2+2?\n<|assistant|>"
    with load(str(random_model), backend="hf", device="cpu") as backend, pytest.raises(HarnessError,
                                                                                        match="chat template"):
        backend.chat_prompt("What is 2+2?")


def read_task(root: Path, model: str, task: str) -> tuple[dict, list[dict]]:
    folder = root / model / task
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return json.loads((folder / "results.json").read_text()), samples


def eval_math(model: Path, data: Path, output: Path, *extra: str) -> int:
    return main(["eval", "--model", str(model), "--tasks", "math", "--data-dir", str(data), "--limit", "2",
                 "--samples", "2", "--output-dir", str(output), "--name", "m", "--no-progress", "--gen-kwargs",
                 "temperature=0.6,top_p=0.95,max_new_tokens=8,max_prompt_tokens=200", *extra])


def test_suite_runs_end_to_end_on_every_data_set(tiny, shared_data, tmp_path):
    assert eval_math(tiny.teacher, shared_data, tmp_path) == 0
    for name in SUITE:
        result, samples = read_task(tmp_path, "m", name)
        assert result["main_metric"] == "pass@1" and result["num_docs"] == 2
        assert {"avg@2", "pass@1", "pass@2", "maj@2", "fallback_rate"} <= set(result["metrics"])
        for sample in samples:
            extracted = sample["annotations"]["extracted"]
            assert len(sample["predictions"]) == len(extracted) == len(sample["scores"]["correct"]) == 2
            gold = sample["references"][0]
            verdicts = verify_completions([(gold, p) for p in sample["predictions"]])
            assert extracted == [v.extracted for v in verdicts]
            assert sample["annotations"]["method"] == [v.method for v in verdicts]
            assert sample["scores"]["correct"] == [float(v.correct) for v in verdicts]
            assert sample["scores"]["correct"] == [math_reward(gold, p) for p in sample["predictions"]]
            assert "extracted" not in sample["scores"] and "method" not in sample["scores"]
    _, samples = read_task(tmp_path, "m", "gsm8k")
    assert samples[0]["references"] == ["18"]


def test_chat_template_flag_reaches_the_prompt_and_fails_cleanly_without_one(chat_model, random_model,
                                                                             shared_data, tmp_path, capsys):
    arguments = ("--chat-template", "--tasks", "aime25")
    assert eval_math(chat_model, shared_data, tmp_path / "chat", *arguments) == 0
    _, samples = read_task(tmp_path / "chat", "m", "aime25")
    assert samples[0]["prompt"].startswith("<|user|>Find the sum") and samples[0]["prompt"].endswith("<|assistant|>")
    assert eval_math(random_model, shared_data, tmp_path / "plain", *arguments) == 2
    assert "no chat template" in capsys.readouterr().err
