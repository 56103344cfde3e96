"""The encoder-decoder backend on a tiny random T5 the tests build: chosen by `load` from the config, scores equal to
transformers' own loss, greedy decoding equal to `generate`, seeded samples independent of the batch, and a CUGE
task end to end."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from harness.backends import GenerationRequest, SamplingSettings, load
from harness.backends.seq2seq import Seq2SeqBackend
from harness.errors import HarnessError
from harness.runner import EvalConfig, evaluate


@pytest.fixture(scope="module")
def backend(random_t5):
    with load(str(random_t5), batch_size=3) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def reference(random_t5):
    return AutoModelForSeq2SeqLM.from_pretrained(random_t5).eval(), AutoTokenizer.from_pretrained(random_t5)


def test_load_picks_the_encoder_decoder_backend(backend, random_t5):
    assert isinstance(backend, Seq2SeqBackend)
    with pytest.raises(HarnessError, match="use --backend hf"):
        load(str(random_t5), backend="vllm")


def test_loglikelihood_equals_the_model_loss(backend, reference):
    model, tokenizer = reference
    pairs = [("我喜欢", "看电影"), ("我喜欢", "音乐"), ("阅读下面的材料，回答问题。", "春风又绿江南岸"), ("", "42")]
    results = backend.loglikelihood(pairs, progress=False)
    for (context, continuation), result in zip(pairs, results):
        labels = tokenizer(continuation, return_tensors="pt")["input_ids"]  # ends with </s>
        with torch.no_grad():
            loss = model(**tokenizer(context, return_tensors="pt"), labels=labels).loss
        assert result.logprob == pytest.approx(-loss.item() * labels.shape[1], rel=1e-5)
    assert backend.token_logprobs(pairs[:1], progress=False)[0] == pytest.approx(
        [lp for lp in backend.token_logprobs(pairs, progress=False)[0]])


def test_greedy_generation_equals_generate(backend, reference):
    model, tokenizer = reference
    prompts = ["我喜欢", "阅读下面的材料，回答问题。", "The number 12"]
    completions = backend.generate([GenerationRequest(p, SamplingSettings(max_new_tokens=6)) for p in prompts],
                                   progress=False)
    for prompt, completion in zip(prompts, completions):
        with torch.no_grad():
            out = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=6, do_sample=False)
        assert completion.text == tokenizer.decode(out[0], skip_special_tokens=True)


def test_no_repeat_ngram_equals_generate(backend, reference):
    model, tokenizer = reference
    prompts = ["我喜欢", "The number 12"]
    settings = SamplingSettings(max_new_tokens=12, no_repeat_ngram_size=2)
    completions = backend.generate([GenerationRequest(p, settings) for p in prompts], progress=False)
    for prompt, completion in zip(prompts, completions):
        with torch.no_grad():
            out = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=12, do_sample=False,
                                 no_repeat_ngram_size=2)
            free = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=12, do_sample=False)
        assert completion.text == tokenizer.decode(out[0], skip_special_tokens=True)
        assert not torch.equal(out, free)  # the ban changed this output, so the check could fail


def test_seeded_samples_do_not_depend_on_the_batch(backend):
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, top_p=0.9)
    alone = backend.generate([GenerationRequest("我喜欢", settings, seed=7)], progress=False)[0]
    batch = backend.generate([GenerationRequest("阅读下面的材料", settings, seed=1),
                              GenerationRequest("我喜欢", settings, seed=7),
                              GenerationRequest("The number", settings, seed=2)], progress=False)
    assert batch[1] == alone
    other_seed = backend.generate([GenerationRequest("我喜欢", settings, seed=8)], progress=False)[0]
    assert other_seed != alone


def test_cuge_tasks_run_end_to_end_on_the_tiny_t5(random_t5, shared_data, tmp_path):
    written = evaluate(EvalConfig(model=str(random_t5), tasks="cuge_ccpm,cuge_cmrc2018", data_dir=str(shared_data),
                                  limit=2, gen_kwargs={"max_new_tokens": 4}, output_dir=str(tmp_path),
                                  progress=False))
    records = [json.loads(path.read_text()) for path in written]
    assert [r["task"] for r in records] == ["cuge_ccpm", "cuge_cmrc2018"]
    assert all(r["num_docs"] == 2 for r in records)
    samples = [json.loads(line) for line in (written[0].parent / "samples.jsonl").read_text().splitlines()]
    assert all(len(s["annotations"]["option_logprobs"][0]) == 4 for s in samples)  # four poems per question
