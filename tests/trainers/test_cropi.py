"""CROPI: the sparse random projection (Johnson-Lindenstrauss bound, seeds, chunks), rank merging by hand, the
per-prompt gradient against plain per-response backward passes, the projected ranking against the unprojected one
on the tiny policy, and runs whose selection files reproduce and whose resume mid-stage changes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.config import load
from harness.trainers.cropi import CROPIConfig, CROPITrainer
from harness.trainers.influence import SparseProjection, cosine_scores, ranks, reciprocal_rank_sum, top_fraction

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# ---- the projection --------------------------------------------------------------------------------------
def test_projection_preserves_inner_products_within_the_johnson_lindenstrauss_bound():
    n, width, dim = 24, 5000, 1024
    x = torch.randn(n, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = SparseProjection(width, dim, keep_ratio=1.0, seed=3, chunk=700)(x).double()
    eps = math.sqrt(8 * math.log(n) / dim)  # JL: dim >= 8 ln(n) / eps^2 keeps all n^2 distances within 1 +- eps
    off = ~torch.eye(n, dtype=torch.bool)
    distortion = (torch.cdist(y, y)[off] / torch.cdist(x, x)[off]) ** 2
    assert distortion.min() > 1 - eps and distortion.max() < 1 + eps
    norms = x.norm(dim=1)
    inner_error = (y @ y.T - x @ x.T).abs() / (norms[:, None] * norms[None, :])
    assert inner_error.max() < eps


def test_projection_is_seeded_chunked_and_independent_of_the_batch(monkeypatch):
    x = torch.randn(6, 3000, generator=torch.Generator().manual_seed(1))
    projection = SparseProjection(3000, 64, keep_ratio=0.1, seed=7, chunk=50)
    drawn = []
    randn = torch.randn

    def recording(*shape, **kwargs):
        drawn.append(shape)
        return randn(*shape, **kwargs)

    monkeypatch.setattr(torch, "randn", recording)
    once = projection(x)
    monkeypatch.undo()
    assert max(rows for rows, _ in drawn) <= 50  # never the whole (kept x dim) matrix
    assert abs(len(projection.kept) - 300) < 60  # about keep_ratio of the coordinates
    again = SparseProjection(3000, 64, keep_ratio=0.1, seed=7, chunk=50)
    assert torch.equal(again(x), once) and torch.equal(again.kept, projection.kept)
    assert torch.allclose(again(x[:2]), once[:2], atol=1e-6)  # a row's image does not depend on its batch
    other = SparseProjection(3000, 64, keep_ratio=0.1, seed=8, chunk=50)
    assert not torch.equal(other.kept, projection.kept) and not torch.allclose(other(x), once)


def test_ranks_and_their_reciprocal_sum_by_hand():
    a, b = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 2.0])
    assert ranks(a).tolist() == [1, 3, 2] and ranks(torch.tensor([1.0, 1.0, 2.0])).tolist() == [2, 3, 1]
    merged = reciprocal_rank_sum([a, b])
    assert merged.tolist() == pytest.approx([1 + 1 / 3, 1 / 3 + 1, 1 / 2 + 1 / 2])
    assert top_fraction(merged, 2) == [0, 1]  # a tie keeps prompt order
    features = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-2.0, 0.0]])
    assert cosine_scores(features, torch.tensor([3.0, 0.0])).tolist() == [1.0, 0.0, -1.0]


def test_the_qwen_recipe_has_the_papers_selection_settings():
    config = load(CROPIConfig, CONFIGS / "cropi_qwen.yaml")
    assert config.model == "Qwen/Qwen2.5-1.5B-Instruct" and config.selector == "cropi"
    assert (config.train_responses, config.valid_responses, config.max_valid_prompts) == (8, 32, 100)
    assert (config.influence_kl_coef, config.keep_ratio, config.projection_dim, config.select_fraction) == \
        (0.001, 0.1, 32768, 0.1)
    assert len(config.influence_valid_files) == 2


def test_the_offline_store_samples_only_missing_parts_and_refuses_other_settings(tmp_path):
    from harness.errors import HarnessError
    from harness.trainers.influence import OfflineRollouts

    sampled = []

    def sample_part(k: int) -> dict[str, torch.Tensor]:
        sampled.append(k)
        ids = torch.full((2, 3), k)
        return {"prompt_ids": ids, "prompt_mask": torch.ones(2, 3), "response_ids": ids[:, : k + 1],
                "response_mask": torch.ones(2, k + 1), "behaviour_logprobs": -torch.ones(2, k + 1),
                "rewards": torch.tensor([0.0, 1.0])}

    settings = {"model": "m", "train_responses": 2}
    first = OfflineRollouts(tmp_path, settings).load("train", 3, sample_part, pad_id=0)
    assert sampled == [0, 1, 2] and first["response_ids"].shape == (6, 3) and first["rewards"].tolist() == [0, 1] * 3
    again = OfflineRollouts(tmp_path, settings).load("train", 3, sample_part, pad_id=0)
    assert sampled == [0, 1, 2] and all(torch.equal(first[name], again[name]) for name in first)
    (tmp_path / "train" / "part-1.pt").unlink()  # as if the run was killed before writing it
    OfflineRollouts(tmp_path, settings).load("train", 3, sample_part, pad_id=0)
    assert sampled == [0, 1, 2, 1]
    with pytest.raises(HarnessError, match="train_responses"):
        OfflineRollouts(tmp_path, {**settings, "train_responses": 4})


def test_bad_selection_settings_are_one_line_errors():
    from harness.errors import HarnessError

    for setting, message in (("selector=best", "selector"), ("select_fraction=0", "select_fraction"),
                             ("valid_responses=1", "valid_responses")):
        with pytest.raises(HarnessError, match=message):
            load(CROPIConfig, None, [setting])


# ---- gradients on the tiny policy ------------------------------------------------------------------------
SMALL = ["rollouts_per_round=2", "group_size=4", "batch_size=8", "micro_batch_size=8", "ppo_epochs=1",
         "max_new_tokens=12", "max_prompt_tokens=64", "rollout_batch_size=8", "train_responses=4",
         "valid_responses=4", "max_valid_prompts=4", "max_eval_samples=4", "eval_problems=2", "progress=false",
         "advantage_std=false", "loss_aggregation=dr_grpo", "rollout_backend=torch"]


@pytest.fixture(scope="module")
def tiny_math():
    from harness import tiny_math

    return tiny_math.build()


@pytest.fixture(scope="module")
def scorer(tiny_math, tmp_path_factory):
    """A CROPI trainer set up on the untrained tiny policy, with offline rollouts of 60 training prompts whose
    rewards are redrawn at random (the policy solves nothing yet), and the policy moved off the behaviour policy."""
    output = tmp_path_factory.mktemp("scorer")
    config = load(CROPIConfig, None, [f"model={tiny_math.policy}", f"data_dir={tiny_math.data / 'math_synth'}",
                                      f"output_dir={output}", "max_train_samples=60", "influence_kl_coef=0.01",
                                      *SMALL])
    trainer = CROPITrainer(config)
    trainer.check_output_dir()
    trainer.setup()
    with torch.no_grad():
        store = trainer.offline_rollouts("train", trainer.problems, config.train_responses)
        draws = torch.Generator().manual_seed(0)
        store["rewards"] = torch.randint(0, 2, store["rewards"].shape, generator=draws).float()
        generator = torch.Generator().manual_seed(1)
        for parameter in trainer.student.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return trainer, store


def test_the_per_prompt_gradient_equals_plain_backward_passes_response_by_response(scorer):
    trainer, store = scorer
    model, G, config = trainer.student, 4, trainer.config
    prompt = next(p for p in range(60) if 0 < store["rewards"][p * G : (p + 1) * G].sum() < G)
    ours = trainer.prompt_gradient(model, list(model.parameters()), store, prompt, G)

    model.zero_grad()
    rewards = store["rewards"][prompt * G : (prompt + 1) * G]
    for row, reward in zip(range(prompt * G, (prompt + 1) * G), rewards, strict=True):
        prompt_ids = store["prompt_ids"][row][store["prompt_mask"][row].bool()]
        response = store["response_ids"][row][store["response_mask"][row].bool()]
        behaviour = store["behaviour_logprobs"][row][: len(response)]
        logits = model(input_ids=torch.cat([prompt_ids, response])[None]).logits[0, :, : trainer.vocab_size]
        logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1] / config.temperature, -1)
        logprobs = logprobs.gather(1, response[:, None]).squeeze(1)
        advantage = reward - rewards.mean()  # Dr. GRPO: no std division
        delta = behaviour - logprobs
        token_losses = -advantage * (logprobs - behaviour).exp() + config.influence_kl_coef * (delta.exp() - delta - 1)
        (token_losses.sum() / (G * config.max_new_tokens)).backward()  # dr_grpo: sum / (G x max_new_tokens)
    plain = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    assert plain.abs().max() > 0
    assert torch.allclose(ours, plain, rtol=1e-4, atol=1e-8)


def test_the_projected_ranking_finds_the_unprojected_top_10_percent(scorer):
    trainer, store = scorer
    gradients = trainer.influence_features(store, list(range(60)), 4, None)  # (60, num_params), unprojected
    target = gradients[:8].mean(0)  # a validation set of 8 prompts
    projection = SparseProjection(gradients.shape[1], 512, keep_ratio=0.1, seed=0, chunk=1024)
    full = cosine_scores(gradients, target)
    projected = cosine_scores(projection(gradients), projection(target[None])[0])
    top = 6  # 10% of 60
    precision = len(set(top_fraction(full, top)) & set(top_fraction(projected, top))) / top
    print(f"precision@10% of the projected ranking: {precision:.2f} (random: 0.10)")
    assert precision > 3 * 0.1


# ---- runs ------------------------------------------------------------------------------------------------
class EvenFirstToken(CROPITrainer):
    """A verifiable reward the untrained policy earns half the time (its first token's id is even), so groups are
    mixed and the selection has something to rank."""

    def rewards(self, rollout, answers):
        return (rollout.response_ids[:, 0] % 2 == 0).float()


def _run(tiny_math, output: Path, steps: int) -> None:
    # evaluation samples from the training run's random stream: evaluating after every step keeps a run stopped at
    # `max_steps` (evaluated at its last step) on the same stream as one that goes on
    config = load(CROPIConfig, None, [f"model={tiny_math.policy}", f"data_dir={tiny_math.data / 'math_synth'}",
                                      f"output_dir={output}", "max_train_samples=20", "select_fraction=0.2",
                                      "stage_steps=2", f"max_steps={steps}", "save_every=0", "eval_every=1",
                                      "lr=1e-2", "projection_dim=64", *SMALL])
    EvenFirstToken(config).run()


def test_selection_files_reproduce_and_a_run_resumed_mid_stage_matches_an_uninterrupted_one(tiny_math, tmp_path):
    from safetensors.torch import load_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(tiny_math, straight, 4)
    _run(tiny_math, resumed, 3)  # stops after the first update of stage 1 (updates 3 and 4)
    stage1 = json.loads((resumed / "selection_stage1.json").read_text())
    _run(tiny_math, resumed, 4)
    assert json.loads((resumed / "selection_stage1.json").read_text()) == stage1  # read back, not rescored at 3
    for stage in (0, 1):
        first = json.loads((straight / f"selection_stage{stage}.json").read_text())
        assert first == json.loads((resumed / f"selection_stage{stage}.json").read_text())
        assert first["step"] == 2 * stage and len(first["prompt_ids"]) == 4 and first["selector"] == "cropi"
        assert all(0 < rate < 1 for rate in first["pass_rates"])  # uniform groups left out
    stages = [json.loads((straight / f"selection_stage{s}.json").read_text())["cosine_valid"] for s in (0, 1)]
    assert stages[0] != stages[1]  # rescored at the new policy
    a, b = load_file(straight / "step-4" / "model.safetensors"), load_file(resumed / "step-4" / "model.safetensors")
    start = load_file(tiny_math.policy / "model.safetensors")
    print("largest weight difference, resumed vs straight:", max((a[n] - b[n]).abs().max().item() for n in a))
    assert all((a[name] - b[name]).abs().max() < 1e-5 for name in a)  # the tolerance of tests/trainers/test_resume.py
    assert any((a[name] - start[name]).abs().max() > 1e-3 for name in a)
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in log] == [r["reward"] for r in again]  # the same prompts and samples


def test_step_speedup_reads_every_checkpoint_and_brackets_the_target_by_its_standard_error(tmp_path):
    from harness.cli import format_speedup
    from harness.pipeline import step_speedup

    def result(method: str, step: int, value: float, selected: bool = False) -> None:
        folder = tmp_path / (f"{method}__selected" if selected else f"{method}__step-{step}") / "math_synth"
        folder.mkdir(parents=True)
        training = {"method": method, "step": step, **({"selected_by": "valid_loss"} if selected else {})}
        (folder / "results.json").write_text(json.dumps({
            "main_metric": "avg@8", "metrics": {"avg@8": value, "avg@8_stderr": 1.0}, "training": training}))

    for step, value in ((10, 3.0), (20, 4.0), (30, 4.5), (40, 5.0)):
        result("grpo", step, value)
    for step, value in ((10, 4.2), (20, 5.5), (30, 6.5), (40, 6.0)):
        result("cropi", step, value)
    result("cropi", 10, 99.0, selected=True)  # the chosen checkpoint's second record is not a point of the curve
    result("sft-init", 120, 5.5)
    record = step_speedup(tmp_path, "math_synth")
    assert (record["baseline_final"], record["baseline_steps"]) == (5.0, 40)
    assert record["initial"] == 5.5 and not record["baseline_improved"]
    assert "measures no learning" in format_speedup(record)
    assert record["speedup"] == 2.0  # cropi reaches 5.0 at step 20: 40 / 20
    assert record["speedup_low_target"] == 4.0 and record["speedup_high_target"] == 40 / 30
    assert record["curves"]["cropi"] == {10: 4.2, 20: 5.5, 30: 6.5, 40: 6.0}
    result("grpo", 50, 9.0)
    record = step_speedup(tmp_path, "math_synth")
    assert record["speedup"] is None and record["baseline_improved"]
    assert "not reached" in format_speedup(record) and "no learning" not in format_speedup(record)
