"""End-to-end training on the tiny models: each method learns what it should, MiniLLM lowers reverse KL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from harness.config import load
from harness.trainers import train
from harness.trainers.data import encode_prompt, read_jsonl
from harness.trainers.minillm import MiniLLMConfig, MiniLLMTrainer, measure_reverse_kl


def _log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]


def test_sft_lowers_validation_loss_and_writes_hf_checkpoints(synth, overrides, launcher, tmp_path):
    seen = []
    paths = train("sft", None, overrides(tmp_path) + [
        "batch_size=16", "micro_batch_size=8", "max_steps=12", "eval_every=4", "save_every=4", "lr=2e-3",
        "max_length=128"], on_checkpoint=lambda path, step: seen.append((path.name, step)))
    assert [p.name for p in paths] == ["step-4", "step-8", "step-12"]
    assert seen == [("step-4", 4), ("step-8", 8), ("step-12", 12)]
    valid = [r["valid_loss"] for r in _log(tmp_path) if "valid_loss" in r]
    assert valid[-1] < valid[0] - 0.3
    assert (paths[-1] / "model.safetensors").is_file() and (paths[-1] / "tokenizer.json").is_file()
    assert (tmp_path / "config.yaml").is_file() and not list(tmp_path.glob(".tmp-*"))


def test_kd_logs_both_terms_and_mixes_them_half_and_half(synth, overrides, launcher, tmp_path):
    train("kd", None, overrides(tmp_path) + ["batch_size=8", "micro_batch_size=8", "max_steps=2"])
    for record in _log(tmp_path):
        assert abs(record["loss"] - 0.5 * record["ce_loss"] - 0.5 * record["kd_loss"]) < 1e-4


def test_seqkd_trains_on_teacher_samples_without_reading_gold_responses(synth, overrides, launcher, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = read_jsonl(synth.data / "train.jsonl")[:16]
    (data / "train.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    (data / "valid.jsonl").write_text((synth.data / "valid.jsonl").read_text())
    output = tmp_path / "run"
    train("seqkd", None, overrides(output) + [
        f"data_dir={data}", "batch_size=8", "micro_batch_size=8", "max_steps=2", "max_new_tokens=24"])
    samples = [json.loads(line) for line in (output / "teacher_samples.jsonl").read_text().splitlines()]
    assert [s["index"] for s in samples] == list(range(16))
    assert all(0 < len(s["response_ids"]) <= 24 for s in samples)
    assert len(_log(output)) == 2


def test_seqkd_can_sample_through_a_harness_backend(synth, overrides, tmp_path):
    from harness.backends import GenerationRequest, SamplingSettings
    from harness.backends import load as load_backend

    output = tmp_path / "run"
    train("seqkd", None, overrides(output) + [
        "max_train_samples=12", "batch_size=4", "micro_batch_size=4", "max_steps=1", "max_new_tokens=16",
        "sample_backend=hf", "seed=7"])
    samples = [json.loads(line) for line in (output / "teacher_samples.jsonl").read_text().splitlines()]
    settings = SamplingSettings(max_new_tokens=16, temperature=1.0, max_prompt_tokens=256)
    rows = read_jsonl(synth.data / "train.jsonl")[:12]
    with load_backend(str(synth.teacher)) as teacher:
        expected = teacher.generate([GenerationRequest(r["prompt"], settings, seed=7 + i) for i, r in enumerate(rows)],
                                    progress=False)
    assert [s["response"] for s in samples] == [c.text for c in expected]
    eos = AutoTokenizer.from_pretrained(synth.teacher).eos_token_id
    assert all(s["response_ids"][-1] == eos for s, c in zip(samples, expected) if c.finish_reason == "stop")


def _reverse_kl(overrides, model: Path, prompts: list[list[int]]) -> float:
    config = load(MiniLLMConfig, None, overrides(Path("unused")) + [f"model={model}",
                  "max_new_tokens=24", "rollout_batch_size=32"])
    trainer = MiniLLMTrainer(config)
    trainer.setup()
    torch.manual_seed(0)
    return measure_reverse_kl(trainer, prompts)


@pytest.mark.slow
def test_minillm_lowers_the_reverse_kl_to_the_teacher_on_held_out_prompts(synth, overrides, launcher, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(synth.student)
    prompts = [encode_prompt(tokenizer, row["prompt"], 256) for row in read_jsonl(synth.data / "test.jsonl")[:32]]
    before = _reverse_kl(overrides, synth.student, prompts)
    paths = train("minillm", None, overrides(tmp_path) + [
        "lr=3e-3", "warmup_steps=0", "batch_size=16", "micro_batch_size=16", "rollouts_per_round=32",
        "ppo_epochs=2", "rollout_batch_size=32", "max_new_tokens=24", "max_steps=24", "eval_every=0",
        "save_every=0", "eval_rollouts=8", "pretrain_seq_len=64", "pretrain_batch_size=8", "pretrain_coef=0.2"])
    after = _reverse_kl(overrides, paths[-1], prompts)
    # measured 6.97 -> 6.47: with w_t inside the clipped ratio (the released code) tokens whose w_t is far from 1 are
    # clipped from the first update on, so this short run moves less than with w_t on the advantage (below 0.9x)
    assert after < 0.95 * before, (before, after)
    log = _log(tmp_path)
    for name in ("pg_loss", "single_step_loss", "pt_loss", "reverse_kl", "response_length", "clip_fraction"):
        assert all(name in record for record in log), name


def _student_with_dropout(synth, folder: Path) -> Path:
    """The tiny student with attention dropout 0.5, so any update run in train mode would be noisy."""
    import shutil

    shutil.copytree(synth.student, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    return folder


def test_minillm_updates_run_without_dropout(synth, overrides, tmp_path):
    from harness.trainers.sampling import Rollout, response_logits, token_logprobs

    config = load(MiniLLMConfig, None, overrides(tmp_path / "run") + [
        f"model={_student_with_dropout(synth, tmp_path / 'student')}", "batch_size=4", "micro_batch_size=4",
        "rollouts_per_round=4", "ppo_epochs=1", "rollout_batch_size=4", "max_new_tokens=8", "max_steps=1",
        "pretrain_batch_size=0"])
    trainer = MiniLLMTrainer(config)
    trainer.setup()
    passes = []
    compute_loss = trainer.compute_loss

    def twice(batch):  # two forward passes of the model being updated, as the loss sees it
        rollout = Rollout(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
        passes.append([token_logprobs(response_logits(trainer.model, rollout, trainer.vocab_size),
                                      batch["response_ids"]) for _ in range(2)])
        return compute_loss(batch)

    trainer.compute_loss = twice
    trainer.optimizer_step(1)
    assert passes and all(torch.equal(first, second) for first, second in passes)
    batch = trainer.micro_batches(2)[0]
    trainer.model.train()  # the same passes with dropout on differ: the check above can fail
    twice(batch)
    assert not torch.equal(*passes[-1])


def test_minillm_drops_long_training_prompts_and_logs_validation_rouge(synth, overrides, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = read_jsonl(synth.data / "train.jsonl")[:8]
    rows[0] = {**rows[0], "prompt": rows[0]["prompt"] + " word" * 300}  # longer than max_prompt_tokens=256
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("valid.jsonl", "pretrain.jsonl"):
        (data / name).write_text((synth.data / name).read_text())
    settings = overrides(tmp_path / "run") + [f"data_dir={data}", "batch_size=4", "micro_batch_size=4",
                                              "rollouts_per_round=4", "rollout_batch_size=4", "max_new_tokens=8",
                                              "max_steps=1", "eval_rollouts=8", "pretrain_batch_size=0"]
    for choice, kept in (("drop", 7), ("keep_tail", 8)):
        trainer = MiniLLMTrainer(load(MiniLLMConfig, None, settings + [f"long_prompts={choice}"]))
        trainer.setup()
        assert len(trainer.prompts) == kept and all(len(p) <= 256 for p in trainer.prompts)
    scores = trainer.evaluate()
    assert 0 <= scores["valid_rougeL"] <= 100 and scores["valid_reverse_kl"] > 0
