"""PICL: the retriever's loss against a direct computation, retrieval on the tiny corpus against its known task
labels, the instance length rules, the 1:1 mix, the GPU recipe, and exact resume after kill -9 in both stages."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.config import load
from harness.errors import HarnessError
from harness.trainers.picl import PICLConfig, PICLTrainer, build_instance, mixed_rows
from harness.trainers.picl_retrieval import TokenStore, contrastive_loss, nearest_neighbours

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny_overrides(paths, root: Path) -> list[str]:
    return [f"model={paths.student}", f"corpus_file={paths.corpus}", f"corpus_labels={paths.labels}",
            f"retriever={paths.retriever}", f"retriever_data={paths.retriever_data}", f"output_dir={root / 'run'}",
            f"artifacts_dir={root / 'artifacts'}", "progress=false"]


@pytest.fixture(scope="module")
def tiny_picl_paths():
    from harness import tiny_picl

    return tiny_picl.build()


@pytest.fixture(scope="module")
def trainer(tiny_picl_paths, tmp_path_factory) -> PICLTrainer:
    """A PICL trainer set up on the first 300 tiny documents, its retriever trained 2 epochs on 960 labelled rows
    (10 per task on average): the retriever, neighbours and instances built."""
    root = tmp_path_factory.mktemp("picl")
    rows = tiny_picl_paths.retriever_data.read_text().splitlines(keepends=True)[:960]
    (root / "retriever.jsonl").write_text("".join(rows))
    config = load(PICLConfig, CONFIGS / "picl.yaml",
                  [*tiny_overrides(tiny_picl_paths, root), "max_documents=300", "retriever_epochs=2",
                   f"retriever_data={root / 'retriever.jsonl'}"])
    trainer = PICLTrainer(config)
    trainer.setup()
    return trainer


def test_contrastive_loss_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    queries, contexts = torch.randn(3, 4, generator=generator), torch.randn(7, 4, generator=generator)
    positives = torch.tensor([[1, 0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 1, 1, 0]])
    expected = 0.0
    for i in range(3):
        scores = [sum(queries[i, d].item() * contexts[j, d].item() for d in range(4)) for j in range(7)]
        log_normaliser = math.log(sum(math.exp(s) for s in scores))
        chosen = [scores[j] - log_normaliser for j in range(7) if positives[i, j]]
        expected += -sum(chosen) / len(chosen) / 3
    assert contrastive_loss(queries, contexts, positives).item() == pytest.approx(expected, rel=1e-5)


def test_instance_keeps_the_nearest_that_fit_cut_and_shuffled_by_seed_with_the_query_last():
    query = list(range(1000, 1040))  # 40 tokens: cut to 29 + separator
    neighbours = [[100 * (i + 1)] * (3 + i % 5) for i in range(20)]  # nearest first, 3..7 tokens each
    separator = [7, 8]
    instance = build_instance(query, neighbours, separator, 31, 64, 16, random.Random(1))
    assert len(instance) <= 64 and instance[-31:] == query[:29] + separator
    demos, paragraph = [], []
    for token in instance[:-31]:
        paragraph.append(token)
        if paragraph[-2:] == separator:
            demos.append(paragraph[:-2])
            paragraph = []
    assert not paragraph and all(len(d) + 2 <= 31 for d in demos)
    kept = sorted(d[0] // 100 - 1 for d in demos)
    assert kept == list(range(len(kept)))  # the nearest ones, none skipped
    cost = [len(n) + 2 for n in neighbours]
    assert 31 + sum(cost[: len(kept)]) <= 64 < 31 + sum(cost[: len(kept) + 1])  # the next one would not fit
    assert build_instance(query, neighbours, separator, 31, 64, 16, random.Random(1)) == instance
    orders = {tuple(build_instance(query, neighbours, separator, 31, 64, 16, random.Random(s))) for s in range(5)}
    assert len(orders) > 1
    roomy = build_instance(query, neighbours, separator, 31, 1024, 16, random.Random(1))
    assert roomy.count(7) == 17  # at most 16 demonstrations, whatever room is left


def test_every_batch_is_half_instances_and_half_chunks_and_each_stream_runs_through_its_epochs():
    seen = []
    for step in range(1, 6):
        picl, lm = mixed_rows(step, instances=40, chunks=12, batch_size=16, seed=3)
        assert len(picl) == len(lm) == 8
        seen += picl
    assert sorted(seen) == list(range(40))  # five half-batches of 8: one epoch over the 40 instances


def test_the_trainer_batches_mix_stored_instances_with_lm_chunks(trainer):
    batch = trainer.micro_batches(1)[0]
    picl, lm = mixed_rows(1, len(trainer.instances), len(trainer.train_examples), 16, trainer.config.seed)
    rows = [trainer.instances[i] for i in picl] + [trainer.train_examples[i].response_ids for i in lm]
    for row, ids in enumerate(rows):
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert batch["labels"][row, : len(ids)].tolist() == ids  # the LM loss on every token
    assert all(len(trainer.train_examples[i].response_ids) == trainer.config.max_length for i in lm)
    assert max(len(trainer.instances[i]) for i in range(len(trainer.instances))) <= trainer.config.max_length


def test_the_filter_scores_the_query_paragraph_as_the_models_own_loss_does(trainer):
    from harness.trainers.picl import _query_losses

    model = trainer.student.eval()
    sequences = [trainer.instances[0], trainer.instances[1][:40]]
    losses = _query_losses(model, sequences, [9, 5], trainer.tokenizer.pad_token_id)
    for ids, query_length, loss in zip(sequences, [9, 5], losses):
        labels = torch.full((1, len(ids)), -100)
        labels[0, len(ids) - query_length + 1:] = torch.tensor(ids[len(ids) - query_length + 1:])
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        assert loss == pytest.approx(expected, rel=1e-4)


def test_the_filter_keeps_a_subset_of_the_same_instances(trainer):
    config = dataclasses.replace(trainer.config, filter_threshold=0.0,
                                 output_dir=Path(trainer.config.output_dir).with_name("filtered"))
    filtered = PICLTrainer(config)
    filtered.setup()
    kept = {tuple(filtered.instances[i]) for i in range(len(filtered.instances))}
    everything = {tuple(trainer.instances[i]) for i in range(len(trainer.instances))}
    assert 0 < len(filtered.instances) < len(trainer.instances) and kept <= everything


def test_retrieval_finds_same_task_paragraphs_far_above_chance(trainer):
    report = json.loads((Path(trainer.config.output_dir) / "retrieval.json").read_text())
    assert 0.005 < report["chance"] < 0.02  # 96 tasks drawn uniformly
    assert report["precision_at_k"] > 10 * report["chance"], report


def test_a_second_run_reuses_every_stored_stage(trainer):
    root = Path(trainer.config.artifacts_dir)
    before = {path: path.stat().st_mtime_ns for path in root.glob("*/*")}
    again = PICLTrainer(trainer.config)
    again.setup()
    assert {path: path.stat().st_mtime_ns for path in root.glob("*/*")} == before
    assert [again.instances[i] for i in range(20)] == [trainer.instances[i] for i in range(20)]


def test_faiss_and_torch_search_agree_and_leave_the_query_out():
    vectors = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    for metric in ("l2", "ip"):
        found = nearest_neighbours(vectors, 5, backend="faiss", metric=metric, batch_size=64)
        exact = nearest_neighbours(vectors, 5, backend="torch", metric=metric, batch_size=64)
        assert (found == exact).mean() > 0.99 and not (found == np.arange(300)[:, None]).any()
    distances = ((vectors[:, None] - vectors[None]) ** 2).sum(-1) + np.diag(np.full(300, np.inf))
    assert (nearest_neighbours(vectors, 5, backend="torch") == np.argsort(distances, 1)[:, :5]).mean() > 0.99


def test_gpu_recipe_holds_the_released_settings_and_bad_settings_are_one_line_errors():
    config = load(PICLConfig, CONFIGS / "picl_gpt2.yaml")
    assert (config.model, config.retriever) == ("gpt2-large", "roberta-base")
    assert (config.retriever_batch_size, config.retriever_lr, config.retriever_epochs) == (64, 5e-5, 10)
    assert (config.k, config.search_metric, config.max_length, config.max_paragraph_tokens,
            config.max_demonstrations, config.filter_threshold) == (20, "l2", 1024, 256, 16, 0.0)
    for bad, message in [("batch_size=15", "even"), ("max_paragraph_tokens=2048", "max_paragraph_tokens"),
                         ("search_backend=annoy", "search_backend")]:
        with pytest.raises(HarnessError, match=message):
            load(PICLConfig, CONFIGS / "picl_gpt2.yaml", [bad])


# ---- exact resume after kill -9, in the retriever stage and in the LM stage ---------------------------------
RESUME = ["max_documents=120", "valid_documents=4", "retriever_epochs=1", "retriever_batch_size=128",
          "retriever_save_every=2", "k=8", "max_steps=6", "save_every=2", "eval_every=2", "batch_size=8",
          "micro_batch_size=8"]


def _kill_when(launcher, command: list[str], marker: Callable[[], bool], what: str) -> None:
    process = launcher(command)
    deadline = time.time() + 240
    while not marker():
        assert process.poll() is None and time.time() < deadline, f"{what}: " + (process.stdout.read() or "")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()


@pytest.mark.slow
def test_sigkill_in_the_retriever_and_in_the_lm_stage_then_rerun_resumes_exactly(tiny_picl_paths, launcher,
                                                                                 tmp_path):
    rows = tiny_picl_paths.retriever_data.read_text().splitlines(keepends=True)[:960]  # 7 retriever steps
    (tmp_path / "retriever.jsonl").write_text("".join(rows))

    def command(root: Path) -> list[str]:
        return ["-m", "harness.trainers", "picl", str(CONFIGS / "picl.yaml"), *tiny_overrides(tiny_picl_paths, root),
                *RESUME, f"retriever_data={tmp_path / 'retriever.jsonl'}"]

    killed, straight = tmp_path / "killed", tmp_path / "straight"
    _kill_when(launcher, command(killed), lambda: any((killed / "artifacts").glob("retriever-*/step-2")),
               "retriever checkpoint")
    assert not list((killed / "artifacts").glob("retriever-*/final"))
    _kill_when(launcher, command(killed), lambda: (killed / "run" / "step-2" / "trainer_state.json").exists(),
               "LM checkpoint")
    assert not (killed / "run" / "step-6").exists()
    for root in (killed, straight):
        process = launcher(command(root))
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out

    retriever = [load_file(next((root / "artifacts").glob("retriever-*/final")) / "model.safetensors")
                 for root in (killed, straight)]
    assert all(torch.equal(retriever[0][name], tensor) for name, tensor in retriever[1].items())
    instances = [TokenStore(next((root / "artifacts").glob("instances-*"))) for root in (killed, straight)]
    assert len(instances[0]) == len(instances[1]) and all(instances[0][i] == instances[1][i] for i in range(50))
    weights = [load_file(root / "run" / "step-6" / "model.safetensors") for root in (killed, straight)]
    for name, tensor in weights[1].items():
        assert (weights[0][name] - tensor).abs().max() < 1e-5, name
    steps = [json.loads(line)["step"] for line in (killed / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
