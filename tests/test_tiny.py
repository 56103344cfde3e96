"""The built-in tiny default: cache behaviour, data invariants, tokenizer and the teacher's edge over the student."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness import tiny
from harness.tiny_data import FAMILIES, PARITY_CHOICES, alpaca_prompt, generate, write_splits


@pytest.fixture(scope="session")
def built() -> tiny.TinyPaths:
    # The shared cache (HARNESS_CACHE or ~/.cache/harness): built once per machine, minutes the first time.
    return tiny.build(progress=False)


def _rows(paths: tiny.TinyPaths, split: str) -> list[dict]:
    with (paths.data / "synth" / f"{split}.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_models_load_with_head_dim_64_and_student_smaller(built: tiny.TinyPaths) -> None:
    teacher = AutoModelForCausalLM.from_pretrained(built.teacher)
    student = AutoModelForCausalLM.from_pretrained(built.student)
    for model in (teacher, student):
        config = model.config
        assert config.head_dim == 64 == config.hidden_size // config.num_attention_heads
        assert next(model.parameters()).dtype == torch.float32
        assert model.generation_config.eos_token_id == AutoTokenizer.from_pretrained(built.teacher).eos_token_id
    assert _parameters(student) * 3 < _parameters(teacher)
    assert 1_000_000 < _parameters(teacher) < 10_000_000


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_tokenizer_round_trips_and_adds_no_special_tokens(built: tiny.TinyPaths) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built.student)
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert 300 <= len(tokenizer) <= 1024
    texts = [row["prompt"] + row["output"] for split in ("train", "test") for row in _rows(built, split)]
    texts += ["Unseen text: naïve café, 12345 \t tabs\n\nand ünïcödé ✓"]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.eos_token_id not in ids
        assert tokenizer.decode(ids) == text


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_template_pieces_are_single_tokens(built: tiny.TinyPaths) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built.teacher)
    for piece in tiny._template_pieces():
        assert len(tokenizer.encode(piece)) == 1 and piece == piece.rstrip(), piece
    prompt = alpaca_prompt("Copy the input.", "cat dog")
    assert tokenizer.decode(tokenizer.encode(prompt)[-1:]) == "\n"  # the final newline is its own token
    assert len(tokenizer.encode(prompt)) < 16


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_splits_are_balanced_disjoint_and_well_formed(built: tiny.TinyPaths) -> None:
    train, valid, test = (_rows(built, split) for split in ("train", "valid", "test"))
    assert len(train) >= 2000 and 150 <= len(test) <= 250 and len(valid) == len(test)
    per_family = {family: sum(row["family"] == family for row in test) for family in FAMILIES}
    assert len(set(per_family.values())) == 1
    train_prompts = {row["prompt"] for row in train}
    pretrain = {line["text"] for line in _rows(built, "pretrain")}
    for row in valid + test:
        assert row["prompt"] not in train_prompts
        assert "\n".join(part for part in (row["instruction"], row["input"], row["output"]) if part) not in pretrain
    assert not {row["prompt"] for row in valid} & {row["prompt"] for row in test}
    for row in train + test:
        assert row["prompt"] == alpaca_prompt(row["instruction"], row["input"]) and isinstance(row["output"], str)
        assert ("choices" in row) == (row["family"] == "parity")
        if "choices" in row:
            assert row["choices"] == PARITY_CHOICES and row["output"] in row["choices"]


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_every_test_capital_is_taught_in_train(built: tiny.TinyPaths) -> None:
    taught = {row["output"] for row in _rows(built, "train") if row["family"] == "capital"}
    assert {row["output"] for row in _rows(built, "test") if row["family"] == "capital"} <= taught


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_data_and_tokenizer_are_deterministic(built: tiny.TinyPaths, tmp_path: Path) -> None:
    write_splits(tmp_path / "synth", generate(seed=tiny.SEED))
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "pretrain.jsonl"):
        assert (tmp_path / "synth" / name).read_bytes() == (built.data / "synth" / name).read_bytes()
    tiny.train_tokenizer(tiny._tokenizer_corpus(generate(seed=tiny.SEED))).save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == (built.teacher / "tokenizer.json").read_bytes()
    assert generate(seed=1)["test"] != generate(seed=tiny.SEED)["test"]


def _greedy_rouge_l(folder: Path, rows: list[dict]) -> float:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = []
    for row in rows:  # one prompt at a time: no padding, so nothing depends on how generate handles it
        ids = torch.tensor([tokenizer.encode(row["prompt"])])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        scores.append(scorer.score(row["output"], text)["rougeL"].fmeasure)
    return 100 * sum(scores) / len(scores)


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_student_made_alone_equals_the_built_student(built: tiny.TinyPaths, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    alone = tiny.save_student(tmp_path / "student")
    assert (alone / "tokenizer.json").read_bytes() == (built.student / "tokenizer.json").read_bytes()
    assert json.loads((alone / "config.json").read_text()) == json.loads((built.student / "config.json").read_text())
    mine, theirs = load_file(alone / "model.safetensors"), load_file(built.student / "model.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[name], theirs[name]) for name in mine)


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_trained_teacher_beats_untrained_student(built: tiny.TinyPaths) -> None:
    rows = _rows(built, "test")[::7][:30]
    teacher, student = _greedy_rouge_l(built.teacher, rows), _greedy_rouge_l(built.student, rows)
    assert teacher > 50 > 20 > student, (teacher, student)


@pytest.mark.slow  # the first run on a machine builds the tiny models (about two minutes)
def test_second_build_returns_at_once_without_rebuilding(built: tiny.TinyPaths) -> None:
    weights = built.teacher / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = tiny.build(cache_root=built.teacher.parent.parent, progress=False)
    assert time.perf_counter() - start < 1.0
    assert again == built and weights.stat().st_mtime_ns == before


def test_concurrent_builds_wait_for_one_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The expensive recipe is swapped for a slow stub: what is under test is the lock and the atomic rename.
    calls: list[int] = []

    def slow_build(folder: Path, progress: bool) -> None:
        calls.append(1)
        time.sleep(0.5)
        (folder / "teacher").mkdir()

    monkeypatch.setattr(tiny, "_build_into", slow_build)
    results: list[tiny.TinyPaths] = []
    threads = [threading.Thread(target=lambda: results.append(tiny.build(tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results[0] == results[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [tiny.VERSION, f"{tiny.VERSION}.lock"]
    tiny.build(tmp_path, force=True)
    assert len(calls) == 2 and (tmp_path / tiny.VERSION / "teacher").is_dir()


def test_unwritable_cache_root_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(tiny.HarnessError, match="HARNESS_CACHE"):
        tiny.build(blocker / "cache", progress=False)
