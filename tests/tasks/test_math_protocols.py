"""The math presets (`--protocol`): each one's verifier on completions written here, its prompt under chat templates
written here, its decoding, and end-to-end runs on the real `amc83`, `gaokao2023en` and `trapo5` files that name the
preset in results.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.metrics.math import qwen_numbers_close
from harness.registry import expand, get_task, suite_protocol
from harness.runner import EvalConfig, configured

THINK_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{{ '<|assistant|><think>\\n' }}"
PLAIN_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"


def under(name: str, protocol: str | None):
    return configured(get_task(name), EvalConfig(tasks=name, protocol=protocol))


def correct(task, gold: str, completions: list[str]) -> list[float]:
    return [s["correct"] for s in task.score_many([({"answer": gold}, text) for text in completions])]


def test_trapo_judges_only_the_text_after_think_and_a_missing_end_is_wrong():
    completions = ["<think>\nso \\boxed{7}", "<think>\nmaybe \\boxed{3}</think> so \\boxed{7}",
                   "<think>\n\\boxed{7}</think> hence \\boxed{3}", "\\boxed{7}"]
    assert correct(under("math500", "trapo"), "7", completions) == [0.0, 1.0, 0.0, 1.0]
    assert correct(under("math500", "default"), "7", completions[:1]) == [1.0]  # the box inside the thinking
    assert under("math500", "trapo").annotate({"answer": "7"}, completions[0])["method"] == "no_think_end"


def test_trapo_regrades_a_wrong_verdict_by_the_last_box():
    # math-verify reads both boxes ("3,5"): wrong; TRAPO's second grader reads the last box alone
    completion = "\\boxed{3} no wait \\boxed{5}"
    assert correct(under("math500", "default"), "5", [completion]) == [0.0]
    assert correct(under("math500", "trapo"), "5", [completion]) == [1.0]
    assert under("math500", "trapo").annotate({"answer": "5"}, completion)["method"] == "last_box"


def test_qwen_tolerance_accepts_0_3333_for_one_third_only_under_its_protocol():
    completions = ["so \\boxed{0.3333}", "so \\boxed{0.333}", "so \\boxed{50\\%}"]
    assert correct(under("math500", "default"), "\\frac{1}{3}", completions[:2]) == [0.0, 0.0]
    assert correct(under("math500", "qwen25-math-cot"), "\\frac{1}{3}", completions[:2]) == [1.0, 0.0]
    assert correct(under("math500", "qwen25-math-cot"), "0.5", completions[2:]) == [1.0]
    # grader.py's readings: relative 1e-4, gold x 100 and gold / 100, a trailing % as / 100
    assert qwen_numbers_close("25", "0.25") and qwen_numbers_close("0.25", "25") and qwen_numbers_close("10%", "0.1")
    assert not qwen_numbers_close("1", "1.001") and not qwen_numbers_close("x", "1")


def test_qwen_answer_phrases_come_before_the_last_number():
    completions = ["The answer is \\sqrt{2}", "so the final answer is \\frac{\\pi}{2}"]
    assert correct(under("math500", "default"), "\\sqrt{2}", completions[:1]) == [0.0]  # the last number, 2
    assert correct(under("math500", "qwen25-math-cot"), "\\sqrt{2}", completions[:1]) == [1.0]
    task = under("math500", "qwen25-math-cot")
    scores = task.score_many([({"answer": "\\frac{\\pi}{2}"}, completions[1])])
    assert scores == [{"correct": 1.0, "fallback": 1.0}]
    assert task.annotate({"answer": "\\frac{\\pi}{2}"}, completions[1])["method"] == "answer_phrase"


def test_each_preset_sets_prompt_decoding_and_samples_together():
    doc = {"problem": " What is 1+1? ", "question": " What is 1+1? "}
    qwen, simplerl = under("aime24", "qwen25-math-cot"), under("aime24", "simplerl")
    assert qwen.prompt(doc) == ("<|im_start|>system\nPlease reason step by step, and put your final answer within "
                                "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
                                "<|im_start|>assistant\n")
    assert qwen.messages(doc)[0]["role"] == "system" and qwen.messages(doc)[1]["content"] == "What is 1+1?"
    assert (qwen.seeds, qwen.sampling.greedy, qwen.sampling.max_new_tokens) == ((0,), True, 2048)
    assert qwen.sampling.stop == ("</s>", "<|im_end|>", "<|endoftext|>")
    assert simplerl.prompt(doc).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "1+1?\nPlease reason step by step, and put your final answer within\\boxed{{}}." in simplerl.prompt(doc)
    for name, samples in (("aime24", 32), ("amc83", 32), ("math500", 1), ("minerva_math", 1), ("olympiadbench", 1)):
        task = under(name, "trapo")
        assert len(task.seeds) == samples and task.chat_template is True and task.record == {"protocol": "trapo"}
        assert (task.sampling.temperature, task.sampling.top_p, task.sampling.max_new_tokens) == (0.6, 1.0, 8192)
        assert task.messages(doc) == [{"role": "user", "content": "What is 1+1?"}]  # the bare question
    default = get_task("aime24")
    assert (default.record, len(default.seeds), default.sampling.top_p) == ({"protocol": "default"}, 32, 0.95)


def test_trapo5_is_tapos_five_sets_and_runs_under_trapo_by_default():
    assert sorted(expand("trapo5")) == ["aime24", "amc83", "math500", "minerva_math", "olympiadbench"]
    assert suite_protocol("trapo5") == "trapo" and suite_protocol("math") is None
    assert configured(get_task("aime24"), EvalConfig(tasks="trapo5")).record == {"protocol": "trapo"}
    assert configured(get_task("aime24"), EvalConfig(tasks="trapo5", protocol="default")).record == {
        "protocol": "default"}


def test_new_sets_read_their_real_files(shared_data):
    from harness.data import load_docs

    amc, gaokao = get_task("amc83"), get_task("gaokao2023en")
    amc_docs, gaokao_docs = load_docs(amc, str(shared_data), None), load_docs(gaokao, str(shared_data), None)
    assert (len(amc_docs), len(gaokao_docs)) == (83, 385)
    assert amc.references(amc_docs[0]) == ["142"]  # stored as "142.0"
    assert gaokao.references(gaokao_docs[0]) == ["\\{x|-2\\leq x < 1\\}"]  # without its $...$


@pytest.fixture(scope="module")
def templated(random_model, tmp_path_factory) -> dict[str, Path]:
    """The random model twice, with a chat template that opens <think> and with a plain one."""
    from transformers import AutoTokenizer

    folders = {}
    for name, template in (("think", THINK_TEMPLATE), ("plain", PLAIN_TEMPLATE)):
        folder = tmp_path_factory.mktemp(name) / "model"
        shutil.copytree(random_model, folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.chat_template = template
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


def run(model: Path, data: Path, output: Path, tasks: str, *extra: str) -> int:
    return main(["eval", "--model", str(model), "--tasks", tasks, "--data-dir", str(data), "--limit", "2",
                 "--samples", "2", "--output-dir", str(output), "--name", "m", "--no-progress",
                 "--gen-kwargs", "temperature=0.6,max_new_tokens=6", *extra])


def results(root: Path, task: str) -> tuple[dict, list[dict]]:
    folder = root / "m" / task
    return (json.loads((folder / "results.json").read_text()),
            [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()])


def test_trapo5_end_to_end_with_a_think_template(templated, shared_data, tmp_path):
    assert run(templated["think"], shared_data, tmp_path, "trapo5") == 0
    for task in expand("trapo5"):
        result, samples = results(tmp_path, task)
        assert result["protocol"] == "trapo" and result["num_docs"] == 2
        for sample in samples:
            assert sample["prompt"].startswith("<|user|>") and sample["prompt"].endswith("<|assistant|><think>\n")
            assert all(p.startswith("<think>\n") for p in sample["predictions"])
            closed = ["</think>" in p for p in sample["predictions"]]
            methods = sample["annotations"]["method"]
            assert [m == "no_think_end" for m in methods] == [not c for c in closed]
            assert all(score == 0.0 for score, c in zip(sample["scores"]["correct"], closed) if not c)


def test_new_tasks_under_qwen_with_a_system_turn_and_bad_protocols(templated, shared_data, tmp_path, capsys):
    assert run(templated["plain"], shared_data, tmp_path, "amc83,gaokao2023en", "--protocol", "qwen25-math-cot",
               "--chat-template") == 0
    for task, start in (("amc83", "<|system|>Please reason step by step"), ("gaokao2023en", "<|system|>Please")):
        result, samples = results(tmp_path, task)
        assert result["protocol"] == "qwen25-math-cot" and result["config"]["protocol"] == "qwen25-math-cot"
        assert samples[0]["prompt"].startswith(start) and "\n<|user|>" in samples[0]["prompt"]
    capsys.readouterr()
    assert run(templated["plain"], shared_data, tmp_path / "x", "dolly", "--protocol", "trapo") == 2
    assert "has no protocol 'trapo'" in capsys.readouterr().err
    assert run(templated["plain"], shared_data, tmp_path / "x", "amc83", "--protocol", "trapp") == 2
    assert capsys.readouterr().err.strip().endswith("use one of default, qwen25-math-cot, simplerl, trapo")
