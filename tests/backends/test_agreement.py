"""The vLLM and transformers backends agree on the tiny teacher: same greedy text, same log-likelihoods.

Both run in float32 on the CPU, so greedy decoding may only differ where two logits tie to within rounding; the
trained teacher is far from such ties on its own test prompts.
"""

from __future__ import annotations

import pytest

from harness.backends.base import GenerationRequest, SamplingSettings
from harness.tiny import build
from harness.tiny_data import generate as tiny_rows

vllm_backend = pytest.importorskip("harness.backends.vllm")

LOGPROB_TOLERANCE = 1e-3  # per summed continuation, float32 on both sides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher_path():
    return build(progress=False).teacher


@pytest.fixture(scope="module")
def engines(teacher_path):
    from harness.backends.hf import HFBackend

    with vllm_backend.VLLMBackend(str(teacher_path), enforce_eager=True) as fast:
        yield fast, HFBackend(str(teacher_path), dtype="float32")


@pytest.fixture(scope="module")
def rows():
    return tiny_rows(seed=0)["test"][::4]  # 50 rows, every task family


def both(engines, method: str, requests) -> tuple[list, list]:
    fast, reference = engines
    return getattr(fast, method)(requests, progress=False), getattr(reference, method)(requests, progress=False)


def test_greedy_generations_are_identical(engines, rows):
    requests = [GenerationRequest(row["prompt"], SamplingSettings(max_new_tokens=48)) for row in rows]
    assert len(requests) >= 50
    fast, reference = both(engines, "generate", requests)
    assert fast == reference
    assert sum(completion.finish_reason == "stop" for completion in fast) > len(fast) // 2


def test_stop_strings_max_tokens_and_prompt_cuts_agree(engines, rows):
    settings = [
        SamplingSettings(max_new_tokens=48, stop=(" ", ",")),
        SamplingSettings(max_new_tokens=3),
        SamplingSettings(max_new_tokens=24, max_prompt_tokens=8),
    ]
    requests = [GenerationRequest(row["prompt"], s) for row in rows[:20] for s in settings]
    fast, reference = both(engines, "generate", requests)
    assert fast == reference


def test_no_repeat_ngram_agrees(engines, rows):
    requests = [
        GenerationRequest(row["prompt"], SamplingSettings(max_new_tokens=32, no_repeat_ngram_size=size))
        for row in rows[:24]
        for size in (2, 4)
    ]
    fast, reference = both(engines, "generate", requests)
    assert fast == reference
    plain = engines[0].generate(
        [GenerationRequest(r.prompt, SamplingSettings(max_new_tokens=32)) for r in requests[::2]], progress=False
    )
    assert plain != fast[::2]  # the ban changed something, so the agreement above means something


def test_loglikelihoods_agree(engines, rows):
    pairs = [(row["prompt"], row["output"]) for row in rows]
    # Contexts that end inside the answer, where the teacher's greedy choices are mostly the reference's.
    pairs += [(row["prompt"] + row["output"].split(" ", 1)[0], " " + row["output"].split(" ", 1)[1])
              for row in rows if " " in row["output"]]
    pairs += [(row["prompt"], " " + row["output"]) for row in rows[:10]]
    pairs += [("", row["instruction"]) for row in rows[:10]]
    fast, reference = both(engines, "loglikelihood", pairs)
    assert [r.logprob for r in fast] == pytest.approx([r.logprob for r in reference], abs=LOGPROB_TOLERANCE)
    assert [r.is_greedy for r in fast] == [r.is_greedy for r in reference]
    assert any(r.is_greedy for r in fast) and not all(r.is_greedy for r in fast)
    fast_tokens, reference_tokens = both(engines, "token_logprobs", pairs[:10])
    for ours, theirs in zip(fast_tokens, reference_tokens, strict=True):
        assert ours == pytest.approx(theirs, abs=LOGPROB_TOLERANCE)
