"""PPT: only the soft prompt learns and is saved; the pre-training formats from a written corpus; a prompt checkpoint
evaluated standalone scores exactly as inside training; prompts never share cache identities; kill -9 resumes."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.errors import HarnessError
from harness.trainers.ppt_data import as_choice, choice_row, pair_row, pretraining_rows, pseudo_labels, sentences
from tests.conftest import SHARED_DATA, make_random_model
from tests.trainers.conftest import kill_when, launch

# Every sentence says where it lives, so a row's label can be checked against the corpus it came from.
DOCS = [" ".join(f"Doc {d} line {i}." for i in range(2 + d % 4)) for d in range(12)]
WHERE = re.compile(r"Doc (\d+) line (\d+)")
TRAIN = ["format=pair", "pretrain_rows=32", "valid_rows=8", "num_virtual_tokens=4", "batch_size=4",
         "micro_batch_size=4", "max_steps=6", "save_every=2", "eval_every=2", "eval_batch_size=8", "lr=0.3",
         "max_length=64", "progress=false"]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("ppt-model"), hidden=64, layers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppt-corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCS))
    return path


def settings(model, corpus, output, *extra):
    return [f"model={model}", "task=", f"corpus={corpus}", f"output_dir={output}", *TRAIN, *extra]


@pytest.fixture(scope="module")
def trained(small_model, corpus, tmp_path_factory):
    """A finished 6-step prompt pre-training run, its trainer kept for in-training scores."""
    from harness.config import load
    from harness.pipeline import recipe_path
    from harness.trainers.ppt import PPTConfig, PPTTrainer

    output = tmp_path_factory.mktemp("ppt-run")
    trainer = PPTTrainer(load(PPTConfig, recipe_path("ppt", None), settings(small_model, corpus, output)))
    trainer.run()
    return trainer, output


def _where(text: str) -> list[tuple[int, int]]:
    return [(int(d), int(i)) for d, i in WHERE.findall(text)]


def test_pair_rows_are_labelled_by_construction():
    import random

    documents = [sentences(doc) for doc in DOCS]
    rng, labels = random.Random(0), []
    for _ in range(300):
        index = rng.randrange(len(documents))
        position = rng.randrange(len(documents[index]) - 1)
        row = pair_row(documents, index, position, rng)
        (d1, i1), (d2, i2) = _where(row["prompt"])
        assert (d1, i1) == (index, position)
        expected = 0 if (d2, i2) == (d1, i1 + 1) else 1 if d2 == d1 else 2
        assert row["label"] == expected and (d2, i2) != (d1, i1), row
        assert row["options"] == [" yes", " maybe", " no"]
        labels.append(row["label"])
    shares = [labels.count(label) / len(labels) for label in range(3)]
    assert all(0.2 < share < 0.45 for share in shares), shares  # 1/3 each, less "maybe" where documents are short


def test_choice_rows_hold_the_next_sentence_one_same_document_negative_and_other_documents():
    import random

    documents = [sentences(doc) for doc in DOCS]
    rng = random.Random(1)
    for index in (3, 7, 11):  # documents of 5, 5 and 5 sentences
        row = choice_row(documents, index, 1, rng)
        shown = row["prompt"].split("\n")[1:-1]
        assert [line[:3] for line in shown] == ["A. ", "B. ", "C. ", "D. ", "E. ", "F. "]
        places = [_where(line)[0] for line in shown]
        assert places[row["label"]] == (index, 2)  # the true next sentence
        assert sum(d == index for d, _ in places) == 2 and len(set(places)) == 6
        assert row["options"][row["label"]] == f" {'ABCDEF'[row['label']]}"
    unified = as_choice({"prompt": "X Question: Y? Answer:", "options": [" yes", " maybe", " no"], "label": 1})
    assert unified["prompt"].endswith("\nA. yes\nB. maybe\nC. no\nAnswer:") and unified["options"][1] == " B"


def test_single_rows_carry_the_classifier_labels(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    folder = make_random_model(tmp_path / "lm", hidden=64, layers=1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=64, num_labels=5,
                         pad_token_id=tokenizer.pad_token_id)
    classifier = LlamaForSequenceClassification(config).eval()
    classifier.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    rows = pretraining_rows(DOCS, "single", str(tmp_path / "clf"), 20, seed=0)
    assert len(rows) == 20
    for row in rows:  # the reference: one unpadded sentence at a time
        text = row["prompt"].removesuffix(" It was")
        with torch.no_grad():
            expected = int(classifier(**tokenizer(text, return_tensors="pt")).logits.argmax())
        assert row["label"] == expected
        assert row["options"] == [" terrible", " bad", " maybe", " good", " great"]
    config.num_labels = 3
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "clf3")
    tokenizer.save_pretrained(tmp_path / "clf3")
    with pytest.raises(HarnessError, match="has 3 labels"):
        pseudo_labels(["a."], str(tmp_path / "clf3"))


def test_only_the_prompt_gets_gradients_and_is_saved(trained, small_model):
    trainer, output = trained
    batch = trainer.micro_batches(1)[0]
    loss, _ = trainer.compute_loss(batch)
    loss.backward()
    with_grad = {name for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    assert with_grad == {"prompt_encoder.default.embedding.weight"}
    step = output / "step-6"
    assert sorted(path.name for path in step.glob("*.safetensors")) == ["adapter_model.safetensors"]
    assert set(load_file(step / "adapter_model.safetensors")) == {"prompt_embeddings"}
    assert set(load_file(step / "training_state" / "model.safetensors")) == with_grad  # the resume copy too
    config = json.loads((step / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(small_model.resolve()) and config["num_virtual_tokens"] == 4
    first, last = (load_file(output / f"step-{n}" / "adapter_model.safetensors")["prompt_embeddings"] for n in (2, 6))
    assert (first - last).abs().max() > 1e-3  # it learned
    base = load_file(small_model / "model.safetensors")
    for name, tensor in trainer.accelerator.unwrap_model(trainer.model).base_model.state_dict().items():
        if name in base:
            assert torch.equal(tensor, base[name]), name  # the model stayed frozen


def test_prompt_checkpoint_scores_standalone_as_in_training(trained):
    from harness.backends.hf import HFBackend

    trainer, output = trained
    logged = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    inside = trainer.option_logprobs(trainer.valid_rows)  # the weights of the last step, step-6
    backend = HFBackend(str(output / "step-6"), device="cpu", batch_size=4)
    assert backend.adapter == output / "step-6"  # results.json names the prompt as the model, its base beside it
    pairs = [(row["prompt"], option) for row in trainer.valid_rows for option in row["options"]]
    alone = [result.logprob for result in backend.loglikelihood(pairs, progress=False)]
    assert alone == pytest.approx([score for row in inside for score in row], abs=1e-4)
    scores = iter(alone)
    per_row = [[next(scores) for _ in row["options"]] for row in trainer.valid_rows]
    acc = 100 * sum(max(range(3), key=s.__getitem__) == row["label"] for s, row in zip(per_row, trainer.valid_rows))
    assert acc / len(per_row) == logged[-1]["valid_acc"]
    # generation runs on the cached prefix too: the same greedy tokens as PEFT's own generate
    from harness.backends.base import GenerationRequest, SamplingSettings

    prompt = trainer.valid_rows[0]["prompt"]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=6)
    ours = backend.generate([GenerationRequest(prompt, settings, seed=0)], progress=False)[0]
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    ids = torch.tensor([backend.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        theirs = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                pad_token_id=backend.tokenizer.pad_token_id, eos_token_id=None)
    assert ours.num_tokens == 6 and ours.text == backend.tokenizer.decode(theirs[0, ids.shape[1]:])
    # batched with prompts of other lengths and budgets, rows joining and leaving keep the prefix in front
    requests = [GenerationRequest(row["prompt"], SamplingSettings(temperature=0.0, max_new_tokens=budget), seed=0)
                for row, budget in zip(trainer.valid_rows[:6], (2, 6, 3, 5, 1, 4))]
    assert len({len(request.prompt) for request in requests}) > 1
    alone = [backend.generate([request], progress=False)[0].text for request in requests]
    backend.batch_size = 3
    assert [c.text for c in backend.generate(requests, progress=False)] == alone


def test_identity_covers_the_prompt_and_bad_folders_are_one_line(trained, small_model, tmp_path):
    from harness.backends import load
    from harness.cli import main
    from harness.models import resolve

    _, output = trained
    identities = {resolve(str(path)).identity for path in (small_model, output / "step-2", output / "step-6")}
    assert len(identities) == 3
    copy = tmp_path / "copy"
    shutil.copytree(output / "step-6", copy)
    prompt = load_file(copy / "adapter_model.safetensors")
    before = resolve(str(copy))
    assert before.identity == resolve(str(output / "step-6")).identity and before.adapter == copy
    save_file({"prompt_embeddings": prompt["prompt_embeddings"] + 0.01}, copy / "adapter_model.safetensors")
    assert resolve(str(copy)).identity != before.identity  # same base, other prompt: other cache keys
    with pytest.raises(HarnessError, match="vLLM cannot serve"):
        load(str(copy), backend="vllm")

    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/nowhere/model"}))
    with pytest.raises(HarnessError, match="base model /nowhere/model .* is not found"):
        resolve(str(copy))
    wider = make_random_model(tmp_path / "wide", hidden=128, layers=1)
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(wider)}))
    with pytest.raises(HarnessError, match="64 wide .* hidden size 128"):
        resolve(str(copy))
    assert main(["eval", "--model", str(copy), "--tasks", "ppt_sst2", "--no-progress"]) == 2


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_exactly(small_model, corpus, tmp_path):
    command = ["-m", "harness.trainers", "ppt"]
    killed = launch(command + settings(small_model, corpus, tmp_path / "killed", "max_steps=4"))
    kill_when(killed, tmp_path / "killed" / "step-2" / "trainer_state.json")
    assert not (tmp_path / "killed" / "step-4").exists()
    for name in ("killed", "straight"):
        process = launch(command + settings(small_model, corpus, tmp_path / name, "max_steps=4"))
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 5))
    resumed, straight = (load_file(tmp_path / name / "step-4" / "adapter_model.safetensors")["prompt_embeddings"]
                         for name in ("killed", "straight"))
    assert (resumed - straight).abs().max() < 1e-5


def test_splits_summarise_as_mean_and_spread_on_the_leaderboard(tmp_path):
    from harness.pipeline import summarise_splits
    from harness.reports import write_leaderboard

    for split, acc in ((1, 50.0), (2, 70.0), (3, 75.0)):
        folder = tmp_path / f"ft-split{split}__selected" / "ppt_synth"
        folder.mkdir(parents=True)
        record = {"schema_version": 1, "task": "ppt_synth", "suites": ["ppt_tiny"], "main_metric": "acc",
                  "higher_is_better": True, "num_docs": 200, "versions": {}, "model": f"ft-split{split}__selected",
                  "model_identity": f"id{split}", "created": "2026-01-01T00:00:00Z", "metrics": {"acc": acc},
                  "config": {"model": f"/runs/ft-split{split}/step-32"},
                  "training": {"method": f"ft-split{split}", "step": 32, "selected_by": "valid_acc"}}
        (folder / "results.json").write_text(json.dumps(record))
    (path,) = summarise_splits(tmp_path, "ft", ["ft-split1", "ft-split2", "ft-split3"])
    summary = json.loads(path.read_text())
    # deviations from 65: -15, 5, 10; population variance 350 / 3
    assert summary["metrics"] == pytest.approx({"acc": 65.0, "acc_std": (350 / 3) ** 0.5})
    assert [split["checkpoint"] for split in summary["splits"]][0] == "/runs/ft-split1/step-32"
    board = next(p for p in write_leaderboard(tmp_path) if p.suffix == ".md").read_text()
    assert "| ft | 65.00 | 65.00 (sd 10.80) |" in board


def test_ppt_starts_from_the_pretrained_prompt(trained, small_model, corpus, tmp_path):
    from harness.config import load
    from harness.pipeline import recipe_path
    from harness.trainers.ppt import PPTConfig, PPTTrainer

    _, output = trained
    config = load(PPTConfig, recipe_path("ppt", None),
                  settings(small_model, corpus, tmp_path, f"prompt_init={output / 'step-6'}"))
    model = PPTTrainer(config).build_model()
    saved = load_file(output / "step-6" / "adapter_model.safetensors")["prompt_embeddings"]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight.detach(), saved)
    assert model.prompt_encoder["default"].embedding.weight.requires_grad
    config = load(PPTConfig, recipe_path("ppt", None), settings(small_model, corpus, tmp_path,
                  f"prompt_init={output / 'step-6'}", "num_virtual_tokens=8"))
    with pytest.raises(HarnessError, match="4 virtual tokens: set num_virtual_tokens=4"):
        PPTTrainer(config).build_model()
    config = load(PPTConfig, recipe_path("ppt", None), settings(output / "step-6", corpus, tmp_path))
    with pytest.raises(HarnessError, match="is a soft prompt, not a model"):
        PPTTrainer(config).build_model()


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="shared/data is not here")
def test_downstream_rows_are_32_balanced_shots_and_a_disjoint_dev_set(small_model, tmp_path):
    from harness.config import load
    from harness.pipeline import recipe_path
    from harness.trainers.ppt import PPTConfig, PPTTrainer

    rows = {}
    for seed in (1, 2):
        config = load(PPTConfig, recipe_path("ppt", None), [f"model={small_model}", "task=ppt_sst2",
                                                            f"data_dir={SHARED_DATA}", f"split_seed={seed}"])
        rows[seed] = PPTTrainer(config).downstream_rows()
    train, dev = rows[1]
    assert len(train) == len(dev) == 32
    assert [row["label"] for row in train].count(0) == [row["label"] for row in dev].count(0) == 16
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in dev}
    assert all(row["prompt"].endswith(" It was") and row["options"] == [" terrible", " great"] for row in train)
    assert {row["prompt"] for row in rows[2][0]} != {row["prompt"] for row in train}  # another split
