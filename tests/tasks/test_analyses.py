"""MiniLLM's analyses as tasks: exposure bias, calibration, length buckets and Dist-4, and their report figures.

Exposure bias is checked on two toys with a known answer: bigram chains (the exact R(l) and eps(l) follow from the
transition tables) and, end to end through `evaluate`, Llamas whose next-token distribution ignores the prefix
(so R(l) = eps(l) = l * KL and ExAccErr is 0). Calibration and the instruction metrics are checked against direct
computations on the same small inputs.
"""

from __future__ import annotations

import base64
import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.metrics.calibration import ece
from harness.metrics.exposure import exacc_err
from harness.metrics.text import distinct_n, rouge_l
from harness.registry import get_task
from harness.reports import analysis_plots, plots, write_leaderboard
from harness.runner import EvalConfig, evaluate
from harness.task import EvalContext
from harness.tasks.calibration import SST2_WORDS, write_classification_subset
from harness.tasks.exposure_bias import evaluate_exposure_bias, prefix_errors
from harness.tasks.instruct import distinct_4, rouge_by_reference_length

# ----- exposure bias on bigram chains: the exact answer by propagating state distributions ----------------------

EOS = 2
TEACHER_TABLE = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
STUDENT_TABLE = torch.tensor([[0.2, 0.7, 0.1], [0.3, 0.5, 0.2], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)


class Bigram(torch.nn.Module):
    """A language model whose next token depends only on the last one, with the forward signature of HF models."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.log_table = table.float().log()

    def forward(self, input_ids, **unused):
        return SimpleNamespace(logits=self.log_table[input_ids], past_key_values=None)


def exact_accumulated_error(sampler_table: torch.Tensor, steps: int) -> list[float]:
    """sum over t <= l of E[KL(P(.|x) || Q(.|x))] for x the token before t, x ~ the chain from token 0."""
    kl = (TEACHER_TABLE * (TEACHER_TABLE / STUDENT_TABLE).log()).sum(-1)
    kl[EOS] = 0.0  # a finished sequence accumulates nothing
    moves = sampler_table.clone()
    moves[EOS] = F.one_hot(torch.tensor(EOS), 3).double()  # end-of-sequence is absorbing
    state, total, curve = F.one_hot(torch.tensor(0), 3).double(), 0.0, []
    for _ in range(steps):
        total += float(state @ kl)
        curve.append(total)
        state = state @ moves
    return curve


def test_exposure_bias_on_bigram_chains_matches_the_exact_answer():
    teacher, student = Bigram(TEACHER_TABLE), Bigram(STUDENT_TABLE)
    prompt, mask = torch.tensor([[0]]), torch.tensor([[1]])
    options = dict(samples=20000, max_new_tokens=6, eos_id=EOS, pad_id=0, vocab_size=3, from_first_token=True)
    torch.manual_seed(0)
    on_student, rollout = prefix_errors(student, teacher, student, prompt, mask, **options)
    on_teacher, _ = prefix_errors(teacher, teacher, student, prompt, mask, **options)
    assert any(len(errors) < 6 for errors in on_student)  # some samples ended early, as the chain predicts
    curve = exacc_err([on_student], [on_teacher], 6, average="all")
    r, eps = exact_accumulated_error(STUDENT_TABLE, 6), exact_accumulated_error(TEACHER_TABLE, 6)
    assert curve.student_prefix == pytest.approx(r, rel=0.02)
    assert curve.teacher_prefix == pytest.approx(eps, rel=0.02)
    expected = [(a - b) / b * 100 for a, b in zip(r, eps)]
    assert curve.value == pytest.approx(expected, abs=4.0)
    assert abs(expected[-1]) > 20.0  # far from 0, so swapping the prefixes or the KL direction would show


def test_released_positions_start_after_the_first_response_token():
    """The released script's positions are the distributions after each response token before the end; with the
    first-token option, those that predict each response token. On a bigram chain the error after token x is
    kl[x], so every row follows from the sampled tokens by hand."""
    teacher, student = Bigram(TEACHER_TABLE), Bigram(STUDENT_TABLE)
    kl = (TEACHER_TABLE * (TEACHER_TABLE / STUDENT_TABLE).log()).sum(-1).tolist()
    options = dict(samples=200, max_new_tokens=4, eos_id=EOS, pad_id=0, vocab_size=3)
    torch.manual_seed(1)
    released, rollout = prefix_errors(student, teacher, student, torch.tensor([[0]]), torch.tensor([[1]]), **options)
    torch.manual_seed(1)
    first, _ = prefix_errors(student, teacher, student, torch.tensor([[0]]), torch.tensor([[1]]), **options,
                             from_first_token=True)
    ended_rows = 0
    for row, got_released, got_first in zip(rollout.response_ids.tolist(), released, first):
        tokens = row[: row.index(EOS)] if EOS in row else row  # response tokens before the end
        ended_rows += EOS in row
        assert got_released == pytest.approx([kl[t] for t in tokens], rel=1e-5)
        assert got_first == pytest.approx([kl[0]] + [kl[t] for t in tokens][: len(got_first) - 1], rel=1e-5)
        assert len(got_first) == len(tokens) + (EOS in row)  # the end-of-text prediction counts there
    assert 0 < ended_rows < 200


def test_no_repeat_ngram_size_bans_repeated_ngrams_while_sampling():
    from harness.trainers.sampling import sample

    sticky = Bigram(torch.tensor([[0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [1 / 3, 1 / 3, 1 / 3]]))
    torch.manual_seed(0)
    free = sample(sticky, torch.tensor([[0]] * 50), torch.tensor([[1]] * 50), eos_id=EOS, pad_id=0, vocab_size=3,
                  max_new_tokens=8)
    banned = sample(sticky, torch.tensor([[0]] * 50), torch.tensor([[1]] * 50), eos_id=EOS, pad_id=0, vocab_size=3,
                    max_new_tokens=8, no_repeat_ngram_size=2)

    def repeats(rollout) -> int:
        count = 0
        for row, mask in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist()):
            sequence = [0] + [t for t, keep in zip(row, mask) if keep]
            grams = list(zip(sequence, sequence[1:]))
            count += len(grams) - len(set(grams))
        return count

    assert repeats(free) > 50 and repeats(banned) == 0


def test_exposure_bias_needs_the_transformers_backend():
    ctx = EvalContext(backend=object(), docs=[], settings=EvalConfig(), teacher=object())
    with pytest.raises(HarnessError, match="--backend hf"):
        evaluate_exposure_bias(ctx)


# ----- end to end through `evaluate`: exposure bias, calibration and S-NI on real tiny models -------------------


def constant_model(source: Path, folder: Path, seed: int) -> Path:
    """A copy of `source` whose next-token distribution is the same after every prefix: every token embeds to the
    same vector, so every position sees identical inputs. End-of-text gets no probability."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with torch.no_grad():
        embed, head = model.get_input_embeddings().weight, model.lm_head.weight
        assert embed.data_ptr() != head.data_ptr()
        embed.copy_(embed[1:2].expand_as(embed).clone())
        hidden = model.model(input_ids=torch.tensor([[1]])).last_hidden_state[0, -1]
        generator = torch.Generator().manual_seed(seed)
        head.copy_(0.3 * torch.randn(head.shape, generator=generator))
        head[tokenizer.eos_token_id] = -1e4 * hidden / hidden.norm() ** 2
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def direct_kl(teacher: Path, student: Path) -> float:
    from transformers import AutoModelForCausalLM

    logits = [AutoModelForCausalLM.from_pretrained(path).eval()(input_ids=torch.tensor([[5, 7]])).logits[0, -1]
              for path in (teacher, student)]
    log_p, log_q = (F.log_softmax(x.detach().double(), -1) for x in logits)
    return float((log_p.exp() * (log_p - log_q)).sum())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


SST2_SENTENCES = ["a fine film", "dull and long", "pear apple fig", "the number 3", "sort these", "is 5"]
SNI_REFERENCES = ["yes", "the cat sat on a mat today", "one two three four five six seven eight nine ten eleven twelve"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, random_model) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("analyses")
    teacher = constant_model(random_model, root / "teacher", seed=1)
    student = constant_model(random_model, root / "student", seed=2)
    data = root / "data"
    write_jsonl(data / "dolly" / "valid.jsonl", [
        {"instruction": "Say hi.", "input": "", "output": "hi", "prompt": "Instruction: Say hi.<n>Response:"},
        {"instruction": "Add.", "input": "", "output": "3", "prompt": "The number 1 plus 2 is"}])
    (data / "sst2").mkdir(parents=True)
    (data / "sst2" / "stsa.binary.dev").write_text("".join(f"{i % 2} {s}\n" for i, s in enumerate(SST2_SENTENCES)))
    write_jsonl(data / "sinst" / "valid.jsonl", [
        {"prompt": f"Task {i}: answer.", "output": [reference, "other"]} for i, reference in enumerate(SNI_REFERENCES)])
    common = dict(data_dir=str(data), output_dir=str(root / "runs"), progress=False, device="cpu", batch_size=4)
    evaluate(EvalConfig(model=str(student), teacher=str(teacher), tasks="exposure_bias", samples=3,
                        gen_kwargs={"max_new_tokens": 5}, **common))
    evaluate(EvalConfig(model=str(random_model), tasks="calibration_sst2,sni", seeds=(1, 2),
                        gen_kwargs={"max_new_tokens": 40}, name="random", **common))
    return SimpleNamespace(root=root / "runs", teacher=teacher, student=student, model=random_model, data=data)


def read_run(runs: SimpleNamespace, model: str, task: str) -> tuple[dict, list[dict]]:
    folder = runs.root / model / task
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return json.loads((folder / "results.json").read_text()), samples


@pytest.mark.slow  # the shared evaluation runs take about 30 s on two CPU cores
def test_exposure_bias_is_zero_when_errors_do_not_depend_on_the_prefix(runs):
    result, samples = read_run(runs, "student", "exposure_bias")
    kl = direct_kl(runs.teacher, runs.student)
    assert kl > 0.05
    accumulated = result["details"]["accumulated_error"]
    assert accumulated["student_prefix"] == pytest.approx([kl * n for n in range(1, 6)], rel=1e-4)
    assert accumulated["teacher_prefix"] == pytest.approx([kl * n for n in range(1, 6)], rel=1e-4)
    assert result["details"]["exacc_err"]["l"] == [1, 2, 3, 4, 5]
    assert result["metrics"]["exacc_err"] == pytest.approx(0.0, abs=1e-2)
    assert len(samples) == 2 and all(len(s["predictions"]) == 3 for s in samples)


@pytest.mark.slow  # the shared evaluation runs take about 30 s on two CPU cores
def test_calibration_matches_a_direct_computation(runs):
    from harness.backends import load

    result, samples = read_run(runs, "random", "calibration_sst2")
    task = get_task("calibration_sst2")
    docs = [{"sentence": sentence, "label": i % 2} for i, sentence in enumerate(SST2_SENTENCES)]
    with load(str(runs.model), device="cpu", batch_size=4) as backend:
        scores = backend.loglikelihood([(task.prompt(d), w) for d in docs for w in SST2_WORDS], progress=False)
    confidence, correct = [], []
    for i, doc in enumerate(docs):
        neg, pos = scores[2 * i].logprob, scores[2 * i + 1].logprob
        p_pos = 1 / (1 + math.exp(neg - pos))
        confidence.append(max(p_pos, 1 - p_pos))
        correct.append(float((p_pos > 0.5) == (doc["label"] == 1)))
    metrics = result["metrics"]
    assert metrics["acc"] == pytest.approx(100 * sum(correct) / len(correct))
    # rel: the run scored in batches of 4, this check in one batch, so log-probs differ in the last bits
    assert metrics["ece"] == pytest.approx(100 * ece(confidence, correct, 10, "equal_mass"), rel=1e-4)  # percent
    assert metrics["ece_equal_width"] == pytest.approx(100 * ece(confidence, correct, 10, "equal_width"), rel=1e-4)
    assert metrics["ece_1bin"] == pytest.approx(100 * abs(sum(confidence) / 6 - sum(correct) / 6), rel=1e-4)
    low, high = metrics["ece_ci95"]  # seeded bootstrap over the six documents
    assert 0 <= low < high and metrics["ece_stderr"] > 0
    assert metrics["acc_stderr"] == pytest.approx(100 * statistics.stdev(correct) / math.sqrt(6))
    with load(str(runs.model), device="cpu", batch_size=4) as backend:
        tokens = backend.token_logprobs([(task.prompt(d), w) for d in docs for w in SST2_WORDS], progress=False)
    chosen = [2 * i + int(scores[2 * i + 1].logprob > scores[2 * i].logprob) for i in range(6)]
    assert any(len(tokens[i]) > 1 for i in chosen)  # a label word of several tokens tells the first from the whole
    raw = [math.exp(tokens[i][0]) for i in chosen]  # the chosen word's first token, not renormalised
    assert metrics["ece_raw"] == pytest.approx(100 * ece(raw, correct, 10, "equal_mass"), rel=1e-4)
    reliability = result["details"]["reliability"]  # the diagram's bins are the reported ECE's
    assert (reliability["metric"], reliability["binning"], reliability["n_bins"]) == ("ece", "equal_mass", 10)
    bins = reliability["bins"]
    assert [b["count"] for b in bins] == [1] * 6  # ten equal-mass bins of six predictions: six of one
    from_bins = sum(b["count"] / 6 * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert 100 * from_bins == pytest.approx(metrics["ece"], rel=1e-6)
    assert [s["references"] for s in samples] == [[SST2_WORDS[d["label"]]] for d in docs]


@pytest.mark.slow  # the shared evaluation runs take about 30 s on two CPU cores
def test_sni_reports_length_buckets_and_dist4(runs):
    result, samples = read_run(runs, "random", "sni")
    metrics = result["metrics"]
    assert (metrics["num_len_0_5"], metrics["num_len_6_10"], metrics["num_len_11_inf"]) == (1.0, 1.0, 1.0)
    for doc_id, bucket in enumerate(("0_5", "6_10", "11_inf")):
        direct = [rouge_l(p, [SNI_REFERENCES[doc_id], "other"]) for p in samples[doc_id]["predictions"]]
        assert metrics[f"rougeL_len_{bucket}"] == pytest.approx(100 * sum(direct) / len(direct))
    distinct, total = distinct_n([p for s in samples for p in s["predictions"]], 4)
    assert (metrics["dist4_distinct"], metrics["dist4_total"]) == (distinct, total)
    assert metrics["dist4_pooled"] == pytest.approx(100 * distinct / total)
    per_seed = [distinct_n([s["predictions"][seed] for s in samples], 4) for seed in (0, 1)]
    assert metrics["dist4"] == pytest.approx(statistics.fmean(100 * d / t for d, t in per_seed))
    assert (result["length_unit"], result["length_tokenizer"]) == ("words", None)


@pytest.mark.slow  # reuses the cached generations of the shared runs
def test_length_buckets_count_the_named_tokenizer_and_results_name_it(runs):
    from transformers import AutoTokenizer

    evaluate(EvalConfig(model=str(runs.model), tasks="sni", seeds=(1, 2), gen_kwargs={"max_new_tokens": 40},
                        name="random-tokens", length_tokenizer=str(runs.model), data_dir=str(runs.data),
                        output_dir=str(runs.root), progress=False, device="cpu", batch_size=4))
    result, _ = read_run(runs, "random-tokens", "sni")
    assert (result["length_unit"], result["length_tokenizer"]) == ("tokens", str(runs.model))
    assert "sinst/11_" in result["reference_split"]
    tokenizer = AutoTokenizer.from_pretrained(runs.model)
    counts = [len(tokenizer(reference, add_special_tokens=False)["input_ids"]) for reference in SNI_REFERENCES]
    for low, high in ((0, 5), (6, 10), (11, 10**9)):
        expected = sum(low <= n <= high for n in counts)
        assert result["metrics"][f"num_len_{low}_{'inf' if high == 10**9 else high}"] == expected
    assert counts != [len(reference.split()) for reference in SNI_REFERENCES]  # tokens, not words


@pytest.mark.slow  # the shared evaluation runs take about 30 s on two CPU cores
def test_report_shows_the_analysis_figures(runs, tmp_path):
    written = write_leaderboard(runs.root, tmp_path)
    names = {path.name for path in written}
    assert {"exacc_err_curve.png", "reliability_diagram.png", "rougeL_length_buckets.png"} <= names
    html = (tmp_path / "leaderboard.html").read_text()
    for name in ("exacc_err_curve", "reliability_diagram", "rougeL_length_buckets"):
        encoded = base64.b64encode((tmp_path / f"{name}.png").read_bytes()).decode()
        assert encoded in html


def test_a_length_tokenizer_folder_without_a_tokenizer_is_a_user_error(tmp_path, random_model):
    with pytest.raises(HarnessError, match="holds no tokenizer"):
        evaluate(EvalConfig(model=str(random_model), tasks="sni", length_tokenizer=str(tmp_path),
                            output_dir=str(tmp_path / "runs"), progress=False, device="cpu"))
    with pytest.raises(HarnessError, match="is not a folder"):
        evaluate(EvalConfig(model=str(random_model), tasks="sni", length_tokenizer=str(tmp_path / "none"),
                            output_dir=str(tmp_path / "runs"), progress=False, device="cpu"))


def test_bad_labels_are_a_user_error(tmp_path, random_model):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "stsa.binary.dev").write_text("5 a label out of range\n")
    with pytest.raises(HarnessError, match="malformed"):
        evaluate(EvalConfig(model=str(random_model), tasks="calibration_sst2", data_dir=str(tmp_path),
                            output_dir=str(tmp_path / "runs"), progress=False, device="cpu"))


# ----- metrics and figures on hand-made records -------------------------------------------------------------------


def record(reference: str, rouge: list[float], predictions: list[str]) -> dict:
    return {"references": [reference], "predictions": predictions, "scores": {"rougeL": rouge}}


def test_length_buckets_leave_empty_buckets_unscored():
    samples = [record("a b c", [0.2, 0.4], ["x", "y"]), record("a b c d e", [0.6, 0.0], ["x", "y"]),
               record(" ".join("w" * 12), [1.0, 1.0], ["x", "y"])]
    found = rouge_by_reference_length(((0, 5), (6, 10), (11, None)))(samples)
    assert found == {"num_len_0_5": 2.0, "rougeL_len_0_5": pytest.approx(30.0), "num_len_6_10": 0.0,
                     "num_len_11_inf": 1.0, "rougeL_len_11_inf": pytest.approx(100.0)}


def test_dist4_per_seed_then_the_mean_with_the_pooled_value_beside():
    # seed 0: "a b c d e", "b c d e" -> 4-grams abcd, bcde, bcde: 2 of 3; seed 1: "a b c d", "a b c d" -> 1 of 2
    samples = [record("r", [0.0, 0.0], ["a b c d e", "a b c d"]), record("r", [0.0, 0.0], ["b c d e", "a b c d"])]
    assert distinct_4(samples) == {"dist4": pytest.approx(100 * (2 / 3 + 1 / 2) / 2),
                                   "dist4_std": pytest.approx(100 * (2 / 3 - 1 / 2) / 2),
                                   "dist4_pooled": pytest.approx(100 * 2 / 5), "dist4_distinct": 2.0,
                                   "dist4_total": 5.0}
    assert distinct_4([record("r", [0.0], ["too short"])]) == {"dist4_distinct": 0.0, "dist4_total": 0.0}


def test_only_sni_and_unni_have_length_buckets():
    bucketed = {name for name in ("dolly", "self_inst", "vicuna", "sni", "unni")
                if len(get_task(name).metrics) > len(get_task("dolly").metrics)}
    assert bucketed == {"sni", "unni"}


def bucket_result(model: str, task: str, values: dict[str, float]) -> dict:
    return {"model": model, "task": task, "main_metric": "rougeL", "metrics": {"rougeL": 1.0, **values}}


def test_length_gain_against_a_named_baseline(monkeypatch):
    monkeypatch.setattr(plots, "FIGURES", dict(plots.FIGURES))
    results = [bucket_result("sft", "sni", {"rougeL_len_0_5": 40.0, "rougeL_len_11_inf": 20.0}),
               bucket_result("minillm", "sni", {"rougeL_len_0_5": 42.0, "rougeL_len_11_inf": 26.5}),
               bucket_result("minillm", "dolly", {})]
    assert analysis_plots.length_bucket_gains(results, "sft") == {
        ("minillm", "sni"): {"0-5": pytest.approx(2.0), "11-inf": pytest.approx(6.5)}}
    assert "rougeL_length_gain" not in plots.FIGURES
    analysis_plots.register_length_baseline("sft")
    figure = plots.FIGURES["rougeL_length_gain"](results)
    heights = [bar.get_height() for bar in figure.axes[0].patches]
    assert heights == pytest.approx([2.0, 6.5])
    assert plots.FIGURES["rougeL_length_gain"]([results[0]]) is None  # nothing to compare against


def test_figures_skip_stores_without_analyses():
    plain = [bucket_result("sft", "dolly", {})]
    for maker in (analysis_plots.exacc_err_curve, analysis_plots.reliability_diagram,
                  analysis_plots.rougeL_length_buckets):
        assert maker(plain) is None


def test_exacc_err_curve_draws_each_model():
    results = [{"model": m, "task": "exposure_bias", "main_metric": "exacc_err", "metrics": {"exacc_err": v[-1]},
                "details": {"exacc_err": {"l": [1, 2, 3], "value": v}}}
               for m, v in (("kd", [1.0, 5.0, 9.0]), ("minillm", [0.5, 1.0, 2.0]))]
    axes = analysis_plots.exacc_err_curve(results).axes[0]
    drawn = {line.get_label(): list(line.get_ydata()) for line in axes.lines if not line.get_label().startswith("_")}
    assert drawn == {"kd": [1.0, 5.0, 9.0], "minillm": [0.5, 1.0, 2.0]}


def test_classification_subset_keeps_rows_with_choices(tmp_path):
    rows = [{"prompt": "Add 1 and 2.", "output": "3", "family": "add"},
            {"prompt": "Is 3 even or odd?", "output": "odd", "family": "parity", "choices": ["even", "odd"]}]
    write_jsonl(tmp_path / "tiny" / "synth" / "test.jsonl", rows)
    folder = write_classification_subset(tmp_path / "tiny", tmp_path / "out")
    kept = [json.loads(line) for line in (folder / "synth" / "classification.jsonl").read_text().splitlines()]
    assert kept == rows[1:]
    task = get_task("calibration_synth")
    assert task.references(kept[0]) == ["odd"] and task.choices(kept[0]) == ["even", "odd"]
