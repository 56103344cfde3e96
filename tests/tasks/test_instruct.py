"""The MiniLLM instruction suite on the real evaluation files (skipped with the reason when they are absent)."""

from __future__ import annotations

import json

import pytest

from harness.data import load_docs
from harness.metrics.text import rouge_l
from harness.registry import get_task
from harness.runner import EvalConfig, evaluate

SIZES = {"dolly": 500, "self_inst": 242, "vicuna": 80, "sni": 1694, "unni": 1050}


def test_every_real_file_loads_with_prompts_and_references(shared_data):
    for name, size in SIZES.items():
        task = get_task(name)
        docs = load_docs(task, shared_data)
        assert len(docs) == size, name
        assert all(task.references(doc) and all(isinstance(r, str) for r in task.references(doc)) for doc in docs)
        prompt = task.prompt(docs[0])
        assert "<n>" not in prompt and prompt.rstrip().endswith("### Response:"), name
    assert task.sampling.no_repeat_ngram_size == 6 and task.seeds == (10, 20, 30, 40, 50)


def test_suite_runs_on_the_tiny_teacher_and_scores_match_a_direct_computation(tiny, shared_data, tmp_path):
    written = evaluate(EvalConfig(model=str(tiny.teacher), tasks="instruct", data_dir=str(shared_data), limit=3,
                                  seeds=(10, 20), gen_kwargs={"max_new_tokens": 16}, output_dir=str(tmp_path),
                                  progress=False))
    assert [path.parent.name for path in written] == list(SIZES)
    for path in written:
        record = json.loads(path.read_text())
        samples = [json.loads(line) for line in (path.parent / "samples.jsonl").read_text().splitlines()]
        direct = [rouge_l(prediction, s["references"]) for s in samples for prediction in s["predictions"]]
        assert record["metrics"]["rougeL"] == pytest.approx(sum(direct) / len(direct) * 100)
        assert record["num_docs"] == 3 and all(len(s["predictions"]) == 2 for s in samples)
        assert record["metrics"]["reference_loss"] > 0


def test_the_suite_keeps_the_first_prompt_tokens_and_cleans_predictions_as_the_reference():
    from harness.backends.base import SamplingSettings
    from harness.tasks.instruct import released_postprocess

    settings = get_task("dolly").sampling
    assert (settings.max_prompt_tokens, settings.truncation_side) == (256, "right")
    ids = list(range(300))
    assert settings.truncate(ids, max_length=1024) == ids[:256]
    assert SamplingSettings(max_prompt_tokens=256).truncate(ids, max_length=1024) == ids[-256:]  # the default side
    assert settings.truncate(ids, max_length=300) == ids[:44]  # room for the 256 new tokens comes first
    assert released_postprocess(" one<n>two<|endoftext|>three<n> ") == "one\ntwo"
    assert get_task("dolly").postprocess is released_postprocess
