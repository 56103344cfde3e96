"""CUGE tasks: the official CMRC 2018 scores on hand-worked cases, EVA's dialogue metrics against NLTK, every real
file read into its documents, and the whole suite end to end on the tiny teacher."""

from __future__ import annotations

import json

import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

from harness.data import load_docs
from harness.errors import HarnessError
from harness.metrics.cmrc import cmrc_em, cmrc_f1, longest_common_run, mixed_segmentation
from harness.metrics.text import rouge_l, zh_chars
from harness.registry import get_suite, get_task, suites
from harness.runner import EvalConfig, evaluate
from harness.tasks.cuge import eva_corpus_metrics, eva_rouge_l, final_number, score_math

# ----- CMRC 2018: cases worked by hand from the official script's definitions --------------------------------------


@pytest.mark.parametrize(
    ("text", "remove_punct", "segments"),
    [
        ("光荣和ω-force", True, ["光", "荣", "和", "ωforce"]),  # a dropped mark does not end the Latin run
        ("光荣和ω-force", False, ["光", "荣", "和", "ω", "-", "force"]),
        ("Hello World.", True, ["hello", "world", "."]),  # "." is not on the script's list
        ("3.14米", True, ["3.14", "米"]),
        ("《战国无双3》", True, ["战", "国", "无", "双", "3"]),
        ("  ", True, []),
    ],
)
def test_mixed_segmentation(text: str, remove_punct: bool, segments: list[str]):
    assert mixed_segmentation(text, remove_punct) == segments


@pytest.mark.parametrize(
    ("prediction", "answers", "em", "f1"),
    [
        ("光荣和ω-force", ["光荣和ω-force"], 1.0, 1.0),
        # longest common contiguous run 2 (光荣 or 和ωforce), not the subsequence 4: P 2/6, R 2/4
        ("光荣公司和ω-force", ["光荣和ω-force"], 0.0, 0.4),
        ("《战国无双3》", ["战国无双3"], 1.0, 1.0),
        ("Hello World.", ["hello world"], 0.0, 0.8),  # P 2/3, R 1
        ("3.14米", ["3.14"], 0.0, 2 / 3),
        ("1998年", ["1998", "1998年"], 1.0, 1.0),  # max over answers
        ("", ["北京"], 0.0, 0.0),
        ("上海", ["北京"], 0.0, 0.0),
    ],
)
def test_cmrc_em_and_f1(prediction: str, answers: list[str], em: float, f1: float):
    assert cmrc_em(prediction, answers) == em
    assert cmrc_f1(prediction, answers) == pytest.approx(f1)


def test_longest_common_run_is_contiguous():
    assert longest_common_run(list("abxcd"), list("abcd")) == 2
    assert longest_common_run(list("xyz"), list("abc")) == 0


# ----- Math23K and KdConv ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("答案是880米", 880.0), ("周长=44*20=880。", 880.0),
                                             ("约为2/3", 2 / 3), ("1,000元", 1000.0), ("-4.5度", -4.5), ("没有", None)])
def test_final_number(text: str, value: float | None):
    assert final_number(text) == (pytest.approx(value) if value is not None else None)


def test_math_accuracy_compares_numbers():
    assert score_math({"answer": 0.6666666}, "所以是2/3")["acc"] == 1.0
    assert score_math({"answer": 880.0}, "880.0")["acc"] == 1.0
    assert score_math({"answer": 880.0}, "88")["acc"] == 0.0


def test_eva_corpus_metrics_equal_nltk_on_characters():
    samples = [{"predictions": ["我喜欢看电影。", "好的"], "references": ["我也喜欢看电影！"]},
               {"predictions": ["这部电影是2001年上映的", "嗯"], "references": ["它是2001年12月28日上映的。"]}]
    metrics = eva_corpus_metrics(samples)
    smoothing = SmoothingFunction().method3
    references = [[list("我也喜欢看电影")], [["它", "是", "2001", "年", "12", "月", "28", "日", "上", "映", "的"]]]
    hypotheses = [list("我喜欢看电影"), ["这", "部", "电", "影", "是", "2001", "年", "上", "映", "的"]]
    first = corpus_bleu(references, hypotheses, smoothing_function=smoothing)
    second = corpus_bleu(references, [list("好的"), ["嗯"]], smoothing_function=smoothing)
    assert metrics["bleu4"] == pytest.approx(100 * (first + second) / 2)
    # Distinct-3 of seed 0: 4 + 8 trigrams, all distinct; seed 1 has none (counted as 0)
    assert metrics["dist3"] == pytest.approx((100.0 + 0.0) / 2)


# ----- the real files and the suite end to end -------------------------------------------------------------------

SIZES = {"cuge_c3": 1890 + 2002, "cuge_ccpm": 2720, "cuge_chid": 2002, "cuge_ocnli": 2950, "cuge_cmrc2018": 3219,
         "cuge_math23k": 1000, "cuge_lcsts": 10666, "cuge_kdconv": 9287}


def test_every_real_file_reads_into_documents(shared_data):
    for name, size in SIZES.items():
        task = get_task(name)
        docs = load_docs(task, shared_data)
        assert len(docs) == size, name
        assert all(task.references(doc) for doc in docs[:50]), name
        if task.choices is not None:
            assert all(task.references(doc)[0] in task.choices(doc) or name == "cuge_chid" for doc in docs[:50])


def test_suites_name_their_tasks_and_hierarchy():
    assert set(suites()["cuge"]) == set(SIZES)
    assert set(suites()["cuge_lite"]) == {"cuge_c3", "cuge_ccpm", "cuge_math23k", "cuge_lcsts", "cuge_kdconv"}
    assert get_suite("cuge").hierarchy["cuge_c3"] == ("c3", "reading_comprehension",
                                                     "language_understanding_discourse")
    assert get_suite("instruct").aggregate_name == "avg"


def test_cuge_suite_runs_end_to_end_on_the_tiny_teacher(tiny, shared_data, tmp_path):
    written = evaluate(EvalConfig(model=str(tiny.teacher), tasks="cuge", data_dir=str(shared_data), limit=2,
                                  gen_kwargs={"max_new_tokens": 8}, output_dir=str(tmp_path), progress=False))
    assert [path.parent.name for path in written] == suites()["cuge"]
    for path in written:
        record = json.loads(path.read_text())
        assert record["num_docs"] == 2 and "cuge" in record["suites"]
        assert 0.0 <= record["metrics"][record["main_metric"]] <= 100.0
    kdconv = json.loads(next(path for path in written if path.parent.name == "cuge_kdconv").read_text())
    assert {"bleu4", "dist3", "dist4", "f1", "rougeL"} <= set(kdconv["metrics"])


def test_ocnli_drops_rows_without_a_majority_label(tmp_path):
    rows = [{"sentence1": "甲", "sentence2": "乙", "label": label} for label in ("neutral", "-", 2, -1)]
    (tmp_path / "ocnli").mkdir()
    (tmp_path / "ocnli" / "dev.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = get_task("cuge_ocnli")
    docs = load_docs(task, tmp_path)
    assert [doc["label"] for doc in docs] == ["neutral", 2]
    assert [task.references(doc) for doc in docs] == [["中立"], ["矛盾"]]


def test_eva_rouge_l_is_f_beta_of_the_best_precision_and_recall():
    # LCS(我喜欢看电影, 我也喜欢看电影) = 6: P 6/6, R 6/7; beta 1.2
    expected = (1 + 1.44) * 1.0 * (6 / 7) / (6 / 7 + 1.44 * 1.0)
    assert eva_rouge_l("我喜欢看电影。", ["我也喜欢看电影！"]) == pytest.approx(expected)
    plain = rouge_l("我喜欢看电影", ["我也喜欢看电影"], zh_chars)
    assert eva_rouge_l("我喜欢看电影", ["我也喜欢看电影"], beta=1.0) == pytest.approx(plain)
    # several references: precision from one, recall from another (not the max of per-reference F)
    assert eva_rouge_l("甲乙", ["甲乙丙丁", "甲"], beta=1.0) == pytest.approx(1.0)
    assert eva_rouge_l("", ["甲"]) == 0.0


def test_a_broken_data_folder_is_one_clear_error(tmp_path):
    (tmp_path / "lcsts").mkdir()
    (tmp_path / "lcsts" / "test.src.txt").write_text("一\n二\n")
    (tmp_path / "lcsts" / "test.tgt.txt").write_text("一\n")
    with pytest.raises(HarnessError, match="cannot read .*test.src.txt .*must align"):
        load_docs(get_task("cuge_lcsts"), tmp_path)
