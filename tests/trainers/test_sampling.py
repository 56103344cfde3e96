"""The shared sampling loop and teacher-forced scoring, on a real (random) tiny Llama."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from harness.trainers.data import left_pad
from harness.trainers.sampling import positions, response_logits, sample, token_logprobs, top_p_filter


@pytest.fixture(scope="module")
def models(random_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(random_model).eval()
    teacher = copy.deepcopy(student)
    with torch.no_grad():  # a different, confident distribution
        teacher.lm_head.weight.mul_(30.0)
    return student, teacher, AutoTokenizer.from_pretrained(random_model)


def _next_probs(model, ids, vocab):
    with torch.no_grad():
        return F.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1, :vocab], -1)


def test_teacher_mixed_sampling_draws_from_the_mixture(models):
    student, teacher, tokenizer = models
    vocab, prompt = len(tokenizer), tokenizer("The number 3 plus")["input_ids"]
    ids, mask = left_pad([prompt] * 4000, tokenizer.pad_token_id)
    torch.manual_seed(0)
    rollout = sample(student, ids, mask, eos_id=-1, pad_id=0, vocab_size=vocab, max_new_tokens=1,
                     mixer=teacher, mix_alpha=0.2)
    q, p = _next_probs(student, prompt, vocab), _next_probs(teacher, prompt, vocab)
    top = int(p.argmax())  # the teacher's favourite: rare under q alone, frequent under the mixture
    expected = 0.8 * q[top] + 0.2 * p[top]
    frequency = (rollout.response_ids[:, 0] == top).double().mean()
    assert abs(frequency - expected) < 4 * (expected * (1 - expected) / 4000) ** 0.5
    assert expected > 10 * q[top]


def test_left_padded_scoring_equals_scoring_each_sequence_alone(models):
    student, _, tokenizer = models
    vocab = len(tokenizer)
    prompts = [tokenizer("Sort these words: pear")["input_ids"], tokenizer("The")["input_ids"]]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    torch.manual_seed(1)
    rollout = sample(student, ids, mask, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                     vocab_size=vocab, max_new_tokens=6)
    with torch.no_grad():
        batched = token_logprobs(response_logits(student, rollout, vocab), rollout.response_ids)
        for row, prompt in enumerate(prompts):
            n = int(rollout.response_mask[row].sum())
            full = torch.tensor([prompt + rollout.response_ids[row, :n].tolist()])
            alone = F.log_softmax(student(input_ids=full).logits[0, len(prompt) - 1 : -1, :vocab], -1)
            expected = alone.gather(-1, full[0, len(prompt):, None]).squeeze(-1)
            assert torch.allclose(batched[row, :n], expected, atol=1e-4)


def test_sampling_stops_each_row_at_eos_and_masks_what_follows(models):
    student, _, tokenizer = models
    ids, mask = left_pad([[5, 6, 7]] * 64, 0)
    torch.manual_seed(2)
    eos = 9
    rollout = sample(student, ids, mask, eos_id=eos, pad_id=0, vocab_size=12, max_new_tokens=8)
    for tokens, alive in zip(rollout.response_ids, rollout.response_mask, strict=True):
        hits = (tokens == eos).nonzero()
        n = int(hits[0, 0]) + 1 if len(hits) else len(tokens)
        assert alive[:n].all() and not alive[n:].any()
    assert (rollout.response_mask.sum(1) < rollout.response_ids.shape[1]).any()  # some row did stop early


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert torch.allclose(top_p_filter(probs, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_positions_start_at_the_first_real_token():
    assert positions(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_engines_of_a_gpu_process_see_only_its_gpu(monkeypatch):
    from harness.trainers.engine_sampling import only_visible_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    with only_visible_gpu(torch.device("cuda", 1)):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"
    with only_visible_gpu(torch.device("cpu")):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"
