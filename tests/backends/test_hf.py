"""The transformers backend on real tiny models: decoding matches transformers, seeds are per request, scoring
matches lm-eval's HFLM."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from harness.backends import GenerationRequest, SamplingSettings, load
from harness.errors import HarnessError

PROMPTS = [f"The number {i} plus {i + 1} is" for i in range(12)] + ["Sort these words:", "pear", "x" * 40]


@pytest.fixture(scope="module")
def backend(random_model):
    return load(str(random_model), batch_size=4, device="cpu")


def texts(backend, requests, batch_size):
    backend.batch_size = batch_size
    return [completion.text for completion in backend.generate(requests, progress=False)]


def test_greedy_equals_transformers_generate(backend):
    settings = SamplingSettings(max_new_tokens=12)
    ours = backend.generate([GenerationRequest(p, settings) for p in PROMPTS[:5]], progress=False)
    for prompt, completion in zip(PROMPTS[:5], ours):
        ids = backend.tokenizer(prompt, return_tensors="pt").input_ids
        reference = backend.model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert completion.text == backend.tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True)


def test_no_repeat_ngram_equals_transformers(backend):
    settings = SamplingSettings(max_new_tokens=24, no_repeat_ngram_size=2)
    ours = backend.generate([GenerationRequest(p, settings) for p in PROMPTS[:4]], progress=False)
    for prompt, completion in zip(PROMPTS[:4], ours):
        ids = backend.tokenizer(prompt, return_tensors="pt").input_ids
        reference = backend.model.generate(ids, max_new_tokens=24, do_sample=False, no_repeat_ngram_size=2,
                                           pad_token_id=0)
        assert completion.text == backend.tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True)


def test_seeded_sampling_ignores_batch_neighbours(backend):
    settings = SamplingSettings(max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50)
    requests = [GenerationRequest(p, settings, seed=i) for i, p in enumerate(PROMPTS)]
    alone = texts(backend, requests, batch_size=1)
    assert texts(backend, requests, batch_size=8) == alone
    assert texts(backend, requests[::-1], batch_size=5)[::-1] == alone
    reseeded = texts(backend, [GenerationRequest(p, settings, seed=100 + i) for i, p in enumerate(PROMPTS)], 8)
    assert reseeded != alone


@contextmanager
def forward_passes(model):
    """(rows, whether it extends a filled KV cache) for every forward pass of `model` while the block runs."""
    passes: list[tuple[int, bool]] = []

    def record(_, args, kwargs):
        cache = kwargs.get("past_key_values")
        passes.append((kwargs["input_ids"].shape[0], cache is not None and cache.get_seq_length() > 0))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield passes
    finally:
        handle.remove()


def settings(row: dict) -> SamplingSettings:
    return SamplingSettings(**{**row["settings"], "stop": tuple(row["settings"]["stop"])})


def test_samples_equal_the_static_batch_loop_and_share_their_prompt(backend):
    """The fixture holds what the previous loop (fixed batches of 4, every row encoded on its own) produced on this
    random model: five seeds for each of five prompts (top-p, n-gram ban), greedy rows with 6-15 token budgets, a
    row ending on a stop string. Prefix forking and continuous batching must give the same samples, with each
    distinct prompt encoded once, also when its samples do not fit in one batch (batch size 3)."""
    reference = json.loads((Path(__file__).parent / "data" / "generate_reference.json").read_text())
    requests = [GenerationRequest(r["prompt"], settings(r), r["seed"]) for r in reference]
    for batch_size in (3, 32):
        backend.batch_size = batch_size
        with forward_passes(backend.model) as passes:
            ours = backend.generate(requests, progress=False)
        assert [(c.text, c.num_tokens, c.finish_reason) for c in ours] == [
            (r["text"], r["num_tokens"], r["finish_reason"]) for r in reference]
        assert sum(rows for rows, cached in passes if not cached) == len({r.prompt for r in requests})
        assert max(rows for rows, _ in passes) <= batch_size


def test_a_finished_row_gives_its_slot_to_the_next_request(backend):
    """Two slots, budgets 12, 2, 2, 12 (longest prompt first): fixed batches would take 11 + 11 decoding steps; with
    continuous batching the short rows pass through the second slot while the first row runs."""
    prompts = ["The number 1 plus 2 is 3 and then", "The number 1 plus 2 is", "Sort these words:", "pear"]
    requests = [GenerationRequest(p, SamplingSettings(max_new_tokens=n)) for p, n in zip(prompts, (12, 2, 2, 12))]
    alone = texts(backend, requests, batch_size=1)
    backend.batch_size = 2
    with forward_passes(backend.model) as passes:
        together = [completion.text for completion in backend.generate(requests, progress=False)]
    assert together == alone
    steps = [rows for rows, cached in passes if cached]
    assert len(steps) <= 14 and steps[:12].count(2) >= 11


def test_greedy_is_batch_size_invariant(backend):
    settings = SamplingSettings(max_new_tokens=16)
    requests = [GenerationRequest(p, settings) for p in PROMPTS]
    assert texts(backend, requests, 1) == texts(backend, requests, 8) == texts(backend, requests, 32)


def test_stop_strings_and_budget(backend):
    free = backend.generate([GenerationRequest(PROMPTS[0], SamplingSettings(max_new_tokens=20))], progress=False)[0]
    assert free.finish_reason == "length" and free.num_tokens == 20
    stop = free.text[3:5]
    cut = backend.generate([GenerationRequest(PROMPTS[0], SamplingSettings(max_new_tokens=20, stop=(stop,)))],
                           progress=False)[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and free.text.startswith(cut.text)


def test_loglikelihood_equals_lm_eval_hflm(backend, random_model):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    pairs = [("The number 3 plus", " 4 is 7."), ("", "Sort these words"), ("Sort these ", "words: pear"),
             ("pear", " apple fig."), ("The number 12 plus 13 is", " 25")]
    peer = HFLM(pretrained=str(random_model), batch_size=2, device="cpu", dtype="float32")
    expected = peer.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    ours = backend.loglikelihood(pairs, progress=False)
    for (logprob, greedy), result in zip(expected, ours):
        assert result.logprob == pytest.approx(logprob, abs=1e-4)
        assert result.is_greedy == greedy
    token_sums = [sum(lps) for lps in backend.token_logprobs(pairs, progress=False)]
    assert token_sums == pytest.approx([r.logprob for r in ours], abs=1e-5)


def test_shared_demonstrations_equal_lm_eval_hflm(backend, random_model):
    """Few-shot requests: two seeds' demonstrations, each shared by several documents, each with two options. The
    shared prefix runs once per seed and is reused across batches; every value must still equal HFLM's."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    demonstrations = ["The number 3 plus 4 is 7. Label: Yes\nSort these words: pear apple fig. Label: No\n",
                      "The number 12 plus 13 is 25. Label: Yes\nThe number 5 plus 6 is 12. Label: No\n"]
    documents = ["The number 1 plus 2 is 3. Label:", "Sort these words: fig. Label:", "The number 9 plus 1 is",
                 "pear apple fig pear apple fig pear. Label:", "The number 30 plus 31 is 61. Label:"]
    pairs = [(demos + doc, option) for demos in demonstrations for doc in documents for option in (" Yes\n", " No")]
    peer = HFLM(pretrained=str(random_model), batch_size=4, device="cpu", dtype="float32")
    expected = peer.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    for batch_size in (3, 8):  # batches that split a seed's documents, and batches that hold several
        backend.batch_size = batch_size
        for (logprob, greedy), result in zip(expected, backend.loglikelihood(pairs, progress=False)):
            assert result.logprob == pytest.approx(logprob, abs=1e-4)
            assert result.is_greedy == greedy
    assert len(backend.tokenizer(demonstrations[0]).input_ids) > 16  # long enough to be shared


def test_loglikelihood_is_a_direct_computation(backend):
    context, continuation = "The number 3 plus", " 4 is 7."
    ids = backend.tokenizer(context + continuation, add_special_tokens=False).input_ids
    n_context = len(backend.tokenizer(context, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logprobs = torch.log_softmax(backend.model(torch.tensor([ids])).logits[0].float(), -1)
    direct = sum(logprobs[i - 1, ids[i]].item() for i in range(n_context, len(ids)))
    assert backend.loglikelihood([(context, continuation)], progress=False)[0].logprob == pytest.approx(direct, 1e-5)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(HarnessError, match="no checkpoint"):
        load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="config.json"):
        load(str(tmp_path / "empty"))


def test_shared_context_scoring_equals_scoring_alone(backend):
    """Options that share a context reuse its KV cache; each must score as if it were alone in a full pass."""
    contexts = ["The number 3 plus 4 is", "Sort these words: pear apple", "", "x" * 30 + " plus "]
    options = [" 7.", " 8", " fig. The number 12 plus 13 is 25.", " pear", ""]
    pairs = [(context, option) for context in contexts for option in options]
    backend.batch_size = 7  # splits some contexts' options across batches
    together = backend.loglikelihood(pairs, progress=False)
    alone = [backend.loglikelihood([pair], progress=False)[0] for pair in pairs]
    for pair, shared, single in zip(pairs, together, alone):
        ids = backend.tokenizer(pair[0] + pair[1], add_special_tokens=False).input_ids
        assert shared.logprob == pytest.approx(single.logprob, abs=1e-5)
        assert shared.is_greedy == single.is_greedy
        if not pair[1] and pair[0] == pair[0].rstrip():  # nothing to score
            assert (shared.logprob, shared.is_greedy) == (0.0, True)
        elif pair[0] and not pair[0].endswith(" "):  # a direct full-sequence pass, no cache, no padding
            n_context = len(backend.tokenizer(pair[0], add_special_tokens=False).input_ids)
            with torch.no_grad():
                logprobs = torch.log_softmax(backend.model(torch.tensor([ids])).logits[0].float(), -1)
            direct = sum(logprobs[i - 1, ids[i]].item() for i in range(n_context, len(ids)))
            assert shared.logprob == pytest.approx(direct, abs=1e-4)
    assert len({round(result.logprob, 3) for result in together}) > len(contexts)


def test_a_huge_prompt_is_cut_before_tokenising_to_the_tokens_the_model_sees(backend, monkeypatch):
    from tests.conftest import HUGE_PROMPT, TokenizerSpy

    request = GenerationRequest(HUGE_PROMPT, SamplingSettings(max_new_tokens=6))
    tail = HUGE_PROMPT[-1_000_000:]  # far more than the 1024 tokens the model sees, tokenised whole
    seen = backend.tokenizer(tail)["input_ids"][-(backend.max_length - 6) :]
    expected_score = backend.loglikelihood([(tail, " pear")], progress=False)[0].logprob
    spy = TokenizerSpy(backend.tokenizer)
    monkeypatch.setattr(backend, "tokenizer", spy)
    assert backend._encode_prompts([request]) == [seen]
    assert backend.loglikelihood([(HUGE_PROMPT, " pear")], progress=False)[0].logprob == pytest.approx(
        expected_score, abs=1e-4)
    assert spy.longest < 1_000_000
