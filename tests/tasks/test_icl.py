"""PICL's ICL suites: prompts byte for byte, the demonstration sampler, option scoring through the cache, the S-NI
task-file loader, and the bad inputs of each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.data import load_rows
from harness.errors import HarnessError
from harness.registry import get_task
from harness.runner import EvalConfig, evaluate, plan
from harness.task import balanced_sample, macro_f1
from harness.tasks.icl import SETS
from tests.test_cli import cached_rows
from tests.test_runner import ScriptedBackend, backends  # noqa: F401  (fixture: a scripted backend as `load`)

# One test document of each set after its first and last demonstration-pool rows, as the model must see them
# (shared/data's first test row and the pool's first and last rows; whitespace runs collapsed).
EXPECTED_PROMPTS = {
    "sst2": "Sentence: a stirring , funny and finally transporting re-imagining of beauty and the beast and 1930s "
            "horror films Label: Positive\nSentence: a deliciously nonsensical comedy about a city coming apart at "
            "its seams . Label: Positive\nSentence: one long string of cliches . Label:",
    "subj": "Input: the tucks have a secret , they 're immortal . they Type: Objective\nInput: the film tells the "
            "parallel , conflicting trajectory of five women : anita , isabel , adela , leire , and maricarmen . "
            "Type: Objective\nInput: pirates of the caribbean is a sweeping action-adventure story set in an era "
            "when villainous pirates scavenged the caribbean seas . Type:",
    "mr": 'Sentence: " analyze that " is one of those crass , contrived sequels that not only fails on its own , '
          "but makes you second-guess your affection for the original . Label: Negative\nSentence: provides a "
          "porthole into that noble , trembling incoherence that defines us all . Label: Positive\nSentence: "
          "simplistic , silly and tedious . Label:",
    "rte": "Passage: No Weapons of Mass Destruction Found in Iraq Yet. Question: Weapons of Mass Destruction Found "
           "in Iraq. Yes or No? Answer: No\nPassage: Turkey is unlikely to become involved in, or allow U.S. forces "
           "to use Turkish territory in a Middle East war that does not threaten her territory directly. Question: "
           "U.S. to use Turkish military bases. Yes or No? Answer: No\nPassage: Dana Reeve, the widow of the actor "
           "Christopher Reeve, has died of lung cancer at age 44, according to the Christopher Reeve Foundation. "
           "Question: Christopher Reeve had an accident. Yes or No? Answer:",
    "agnews": "Sentence: Tokyo Stocks Rise as Techs Rally TOKYO (Reuters) - Tokyo's Nikkei average climbed for a "
              "third straight day on Thursday, rising over one percent as a rally in New York boosted tech issues "
              "such as Toshiba Corp and Shin-Etsu Chemical Label: Business\nSentence: Two Chinese salesman gunned "
              "down in Thailand's restive south (AFP) AFP - Two Chinese travelling salesmen have been gunned down in "
              "southern Thailand as part of separatist violence which has claimed more than 275 lives since the "
              "start of the year, officials said. Label: World politics\nSentence: Fears for T N pension after talks "
              "Unions representing workers at Turner Newall say they are 'disappointed' after talks with stricken "
              "parent firm Federal Mogul. Label:",
    "cb": "Passage: It was a complex language. Not written down but handed down. One might say it was peeled down. "
          "Question: the language was peeled down Answer: Yes\nPassage: Under the Racketeer Influenced and Corrupt "
          "Organizations law, or RICO, the government has the authority to seek to freeze or seize a defendant's "
          "assets before trial. According to individuals familiar with Mr. Antar's case, prosecutors issued their "
          "warning this week after one of Mr. Antar's attorneys asked whether legal fees might be subject to "
          "seizure. In a letter, prosecutors told Mr. Antar's lawyers that because of the recent Supreme Court "
          "rulings, they could expect that any fees collected from Mr. Antar may be seized. Question: any fees "
          "collected from Mr. Antar may be seized Answer: Yes\nPassage: Valence the void-brain, Valence the "
          "virtuous valet. Why couldn't the figger choose his own portion of titanic anatomy to shaft? Did he think "
          "he was helping? Question: Valence was helping Answer:",
    "sst5": "Sentence: a stirring , funny and finally transporting re-imagining of beauty and the beast and 1930s "
            "horror films Label: great\nSentence: a deliciously nonsensical comedy about a city coming apart at its "
            "seams . Label: great\nSentence: no movement , no yuks , not much of anything . Label:",
}
EXPECTED_GOLD = {"sst2": "Negative", "subj": "Objective", "mr": "Negative", "rte": "No", "agnews": "Business",
                 "cb": "No", "sst5": "bad"}


@pytest.mark.parametrize("short", sorted(SETS))
def test_prompt_of_every_set_is_byte_exact(short, shared_data):
    spec, _ = SETS[short]
    task = get_task(f"icl_{short}")
    doc = load_rows(spec.test, shared_data, "test")[0]
    pool = load_rows(spec.pool, shared_data, "pool")
    assert task.fewshot_prompt(doc, [pool[0], pool[-1]]) == EXPECTED_PROMPTS[short]
    assert task.references(doc) == [EXPECTED_GOLD[short]]
    assert task.choices(doc) == [f" {word}\n" for word in spec.words]


def test_real_folders_give_the_protocol_sizes(shared_data):
    sizes = {item.task.name: (len(item.docs), len(item.pool)) for item in plan(EvalConfig(
        model="x", tasks="icl_cls", data_dir=str(shared_data)))}
    # balanced test subsets (up to 1,000, as many of each label as the rarest has) and the whole pools
    assert sizes == {"icl_sst2": (856, 6920), "icl_subj": (1000, 8000), "icl_mr": (1000, 8662),
                     "icl_rte": (262, 2490), "icl_agnews": (1000, 400), "icl_cb": (15, 250),
                     "icl_sst5": (1000, 8544)}


# ----- the sampler ------------------------------------------------------------------------------------------------

POOL = [{"label": label, "n": n} for n, label in enumerate([0] * 7 + [1] * 5 + [2] * 3)]


def test_balanced_sampler_draws_every_label_equally_and_depends_on_the_seed():
    def label(row):
        return row["label"]

    for k, each in ((3, 1), (6, 2), (9, 3)):
        picked = balanced_sample(POOL, k, 10, label)
        assert len(picked) == len(set(picked)) == k
        assert Counter(POOL[i]["label"] for i in picked) == {0: each, 1: each, 2: each}
    cut = balanced_sample(POOL, 4, 10, label)  # ceil(4 / 3) = 2 per label, cut to 4 after shuffling
    assert len(cut) == 4 and max(Counter(POOL[i]["label"] for i in cut).values()) == 2
    assert balanced_sample(POOL, 6, 10, label) == balanced_sample(POOL, 6, 10, label)
    draws = {tuple(balanced_sample(POOL, 6, seed, label)) for seed in (10, 20, 30, 40, 50)}
    assert len(draws) == 5
    assert balanced_sample(POOL, 0, 10, label) == []
    with pytest.raises(HarnessError, match="3 rows of label 2.*need 4"):
        balanced_sample(POOL, 12, 10, label)


def test_macro_f1_is_the_mean_of_per_class_f1():
    predicted, gold = ["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"]
    # a: P 1/2 R 1/2 -> 1/2; b: P 1 R 2/3 -> 4/5; c: P 0 R 0 -> 0
    assert macro_f1(predicted, gold) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def write_sst2(folder: Path, test_size: int = 12, pool_size: int = 10) -> Path:
    (folder / "sst2").mkdir(parents=True, exist_ok=True)
    words = ["fine", "dull", "pear", "apple", "fig", "sort", "the", "number"]
    for name, size in (("stsa.binary.dev", test_size), ("stsa.binary.train", pool_size)):
        lines = [f"{i % 2} {words[i % 8]} {words[(3 * i) % 8]}  film {i}\n" for i in range(size)]
        (folder / "sst2" / name).write_text("".join(lines))
    return folder


def run_sst2(data: Path, tmp_path: Path, **changes) -> tuple[dict, list[dict]]:
    settings = dict(model="m1", tasks="icl_sst2", data_dir=str(data), output_dir=str(tmp_path / "runs"),
                    progress=False)
    [path] = evaluate(EvalConfig(**{**settings, **changes}))
    samples = [json.loads(line) for line in (path.parent / "samples.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), samples


def test_demonstrations_are_shared_within_a_seed_and_reported(tmp_path, backends):  # noqa: F811
    data = write_sst2(tmp_path / "data")
    record, samples = run_sst2(data, tmp_path)
    demonstrations = record["details"]["demonstrations"]
    assert sorted(demonstrations) == ["10", "20", "30", "40", "50"]
    pool = (data / "sst2" / "stsa.binary.train").read_text().splitlines()
    for position, seed in enumerate(("10", "20", "30", "40", "50")):
        rows = [pool[i] for i in demonstrations[seed]]
        assert len(rows) == 4 and Counter(row[0] for row in rows) == {"0": 2, "1": 2}
        shown = "".join(f"Sentence: {' '.join(row[2:].split())} Label: {'Positive' if row[0] == '1' else 'Negative'}\n"
                        for row in rows)
        for sample in samples:  # every document of a seed after the same demonstrations, in the reported order
            assert sample["annotations"]["prompt"][position].startswith(shown)
    assert len({tuple(indices) for indices in demonstrations.values()}) == 5
    sample = samples[0]
    assert sample["references"] == ["Negative"] and len(sample["predictions"]) == 5
    assert all(len(logprobs) == 2 for logprobs in sample["annotations"]["option_logprobs"])
    # the scripted backend's log-prob is minus the continuation's length: " Negative\n" and " Positive\n" tie,
    # and a tie goes to the first option
    assert set(sample["predictions"]) == {"Negative"}
    assert record["metrics"]["acc"] == pytest.approx(50.0) and record["metrics"]["acc_std"] == 0.0
    zero, zero_samples = run_sst2(data, tmp_path, num_fewshot=0, name="zero")
    assert "demonstrations" not in zero["details"] and len(zero_samples[0]["predictions"]) == 1
    prompt = zero_samples[0]["prompt"]
    assert zero_samples[0]["annotations"]["prompt"] == [prompt] and prompt.startswith("Sentence: ")
    assert "\n" not in prompt and prompt.endswith(" Label:")


def test_option_scores_are_cached_and_never_asked_twice(tmp_path, backends, monkeypatch):  # noqa: F811
    data = write_sst2(tmp_path / "data")
    asked = []
    scripted = ScriptedBackend.loglikelihood

    def counting(self, requests, progress=True):
        asked.extend(requests)
        return scripted(self, requests, progress)

    monkeypatch.setattr(ScriptedBackend, "loglikelihood", counting)
    first, _ = run_sst2(data, tmp_path)
    assert len(asked) == 12 * 5 * 2
    second, _ = run_sst2(data, tmp_path, overwrite=True)
    assert len(asked) == 12 * 5 * 2 and second["metrics"] == first["metrics"]


def test_bad_pools_and_shot_counts_are_one_line_errors_that_keep_results(tmp_path, backends):  # noqa: F811
    data = write_sst2(tmp_path / "data", pool_size=9)  # five rows of label 0, four of label 1
    record, _ = run_sst2(data, tmp_path)
    results = tmp_path / "runs" / "scripted" / "icl_sst2" / "results.json"
    before = results.read_text()
    with pytest.raises(HarnessError, match="--num-fewshot 10 is larger than the demonstration pool"):
        run_sst2(data, tmp_path, num_fewshot=10)
    with pytest.raises(HarnessError, match="4 rows of label 1.*need 5.*--num-fewshot"):
        run_sst2(data, tmp_path, num_fewshot=9)
    with pytest.raises(HarnessError, match="--num-fewshot must be a whole number >= 0"):
        run_sst2(data, tmp_path, num_fewshot=-1)
    assert results.read_text() == before and record["num_docs"] == 12


def test_missing_sets_are_listed_all_at_once(tmp_path, backends):  # noqa: F811
    data = write_sst2(tmp_path / "data")
    with pytest.raises(HarnessError) as error:
        run_sst2(data, tmp_path, tasks="icl_sst2,icl_cb,icl_agnews")
    message = str(error.value)
    for name in ("cb/val.jsonl", "cb/train.jsonl", "agnews/test.csv", "agnews/train_4.jsonl"):
        assert name in message
    assert "sst2" not in message and "\n" not in message


@pytest.mark.slow
def test_kill_9_during_option_scoring_then_rerun_is_identical(random_model, tmp_path):
    data = write_sst2(tmp_path / "data", test_size=40, pool_size=20)
    args = ["eval", "--model", str(random_model), "--tasks", "icl_sst2", "--data-dir", str(data), "--batch-size",
            "2", "--device", "cpu"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen([sys.executable, "-m", "harness", *args, "--output-dir", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while cached_rows(killed) < 24 and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = cached_rows(killed)
    assert 0 < done_before < 400, "the kill must land in the middle of the run"

    def harness(root: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", *args, "--output-dir", str(root)],
                              capture_output=True, text=True, timeout=600)

    resumed = harness(killed)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {done_before} of 400 options found in the cache" in resumed.stderr
    assert cached_rows(killed) == 400  # nothing was scored twice
    uninterrupted = harness(clean)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    def outcome(root: Path):
        folder = next(root.glob("*/icl_sst2"))
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        return json.loads((folder / "results.json").read_text())["metrics"], samples

    assert outcome(killed) == outcome(clean)
