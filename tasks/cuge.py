"""CUGE, the Chinese language understanding and generation benchmark (Yao et al. 2021), on the datasets in the data
folder: suite `cuge` (all of them) and `cuge_lite` (those of the lite board that exist here: CCPM, C3, LCSTS,
KdConv, Math23K; Sogou-Log and WMT20 En-Zh are missing).

Protocol: one Chinese prompt per task, zero-shot (the report fine-tunes every model; here the checkpoint is used as
it is). Multiple-choice sets score each option by its log-likelihood after the prompt (accuracy); generation sets
decode greedily except KdConv, which samples as EVA does (top-p 0.9, temperature 0.9). Scores, x100:

- C3, CCPM, ChID, OCNLI: accuracy. ChID scores each candidate idiom together with the text after the blank (up
  to `CHID_RIGHT_CONTEXT` characters), so the right context counts; OCNLI drops rows labelled "-" (no majority).
- CMRC 2018: EM and F1 of the official script (`harness.metrics.cmrc`); main metric F1.
- Math23K: the last number of the answer (a/b fractions allowed) equals the reference within 1e-4 (relative).
- LCSTS: character ROUGE-1/2/L (`zh_chars`). The data here is PART II (10,666 pairs), not the 725-pair PART III
  test the report scores, so the task says so in its description.
- KdConv: EVA's metrics on characters: corpus BLEU-4 (NLTK `corpus_bleu`, smoothing method 3), corpus
  Distinct-3/4, unigram F1 and ROUGE-L (both per response, max over references). One document per response turn,
  its dialogue history and the knowledge triples of that turn in the prompt. ROUGE-L is EVA's: F-beta with
  `KDCONV_ROUGE_BETA` = 1.2 from the best precision and the best recall over references (1.0 gives the plain F1).
  One place of EVA's code we do not copy: its Distinct-n skips each response's last n-gram.

The suites' score is the CUGE index (`harness.metrics.cuge`): each dataset's main metric over the mT5-small
baseline's, averaged dataset -> task -> capability; a board with datasets missing is marked partial.
Data: the files described in each `shared/data/<name>/SOURCE.md`; hub ids where the hub rows have the same fields
(C3, CMRC 2018, OCNLI: `clue/clue` validation splits; OCNLI's unlabelled rows are dropped from either source).
"""

from __future__ import annotations

import math
import re
import statistics
from functools import partial
from pathlib import Path
from typing import Any

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

from harness.backends.base import SamplingSettings
from harness.data import read_json_lines, read_rows, read_text
from harness.metrics.cmrc import cmrc_em, cmrc_f1
from harness.metrics.cuge import HIERARCHY, LITE_BOARD, MT5_SMALL_BASELINES, cuge_scores
from harness.metrics.text import distinct_n, lcs_length, rouge_l, rouge_n, unigram_f1, zh_chars
from harness.registry import SuiteScore, register_suite, register_task
from harness.task import ChoicePrediction, DataSource, Doc, Metric, Task, seed_mean

CHID_RIGHT_CONTEXT = 32
KDCONV_ROUGE_BETA = 1.2  # EVA's code (coco-caption's value); the CUGE report does not say
SPAN = SamplingSettings(max_new_tokens=32, temperature=0.0, stop=("\n",))
SUMMARY = SamplingSettings(max_new_tokens=48, temperature=0.0, stop=("\n",))
REASONING = SamplingSettings(max_new_tokens=256, temperature=0.0)
EVA_SAMPLING = SamplingSettings(max_new_tokens=64, temperature=0.9, top_p=0.9, stop=("\n",), max_prompt_tokens=512)
OCNLI_WORDS = {"entailment": "蕴含", "neutral": "中立", "contradiction": "矛盾"}  # hub label ids 0, 1, 2

# ----- reading the files (one document per question, turn or pair) ----------------------------------------------


def read_c3(path: Path) -> list[Doc]:
    """Both C3 test files (dialogue `d` and mixed-genre `m`) of the folder, one row per question."""
    docs = []
    for name in ("c3-d-test.json", "c3-m-test.json"):
        for paragraphs, questions, doc_id in read_rows(path.parent / name):
            docs += [{"id": doc_id, "context": paragraphs, **question} for question in questions]
    return docs


def read_cmrc(path: Path) -> list[Doc]:
    """SQuAD-style articles -> one row per question, answers shaped like the hub's (`answers.text`)."""
    return [{"id": qa["id"], "context": paragraph["context"], "question": qa["question"],
             "answers": {"text": [answer["text"] for answer in qa["answers"]]}}
            for article in read_rows(path) for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def read_lcsts(path: Path) -> list[Doc]:
    """Aligned `test.src.txt` / `test.tgt.txt`: one text and its summary per line."""
    sources = read_text(path).splitlines()
    targets = read_text(path.with_name("test.tgt.txt")).splitlines()
    if len(sources) != len(targets):
        raise ValueError(f"{path} has {len(sources)} lines but test.tgt.txt has {len(targets)}; they must align")
    return [{"text": text, "summary": summary} for text, summary in zip(sources, targets)]


def read_kdconv(path: Path) -> list[Doc]:
    """Every response turn of the film, music and travel test dialogues, with its history and knowledge."""
    docs = []
    for domain in ("film", "music", "travel"):
        for conversation in read_rows(path.parent.parent / domain / "test.json"):
            messages = conversation["messages"]
            docs += [{"domain": domain, "history": [m["message"] for m in messages[:turn]],
                      "knowledge": messages[turn].get("attrs", []), "response": messages[turn]["message"]}
                     for turn in range(1, len(messages))]
    return docs


# ----- prompts ---------------------------------------------------------------------------------------------------


def c3_prompt(doc: Doc) -> str:
    return f"阅读下面的材料，回答问题。\n材料：{''.join(doc['context'])}\n问题：{doc['question']}\n答案："


def ccpm_prompt(doc: Doc) -> str:
    return f"下面这句现代文描述的是哪一句古诗？\n现代文：{doc['translation']}\n古诗："


def chid_parts(doc: Doc) -> tuple[str, str]:
    before, after = doc["content"].split("#idiom#", 1)
    return before, after[:CHID_RIGHT_CONTEXT]


def chid_prompt(doc: Doc) -> str:
    return "在空白处填入最恰当的成语。\n" + chid_parts(doc)[0]


def ocnli_prompt(doc: Doc) -> str:
    return (f"前提：{doc['sentence1']}\n假设：{doc['sentence2']}\n"
            "前提与假设的关系是蕴含、中立还是矛盾？\n答案：")


def cmrc_prompt(doc: Doc) -> str:
    return f"阅读文章，从文章中摘出问题的答案。\n文章：{doc['context']}\n问题：{doc['question']}\n答案："


def math23k_prompt(doc: Doc) -> str:
    return f"解答下面的数学应用题，最后写出答案的数值。\n题目：{doc['original_text']}\n解答："


def lcsts_prompt(doc: Doc) -> str:
    return f"为下面的短文写一个简短的摘要。\n短文：{doc['text']}\n摘要："


def kdconv_prompt(doc: Doc) -> str:
    facts = "；".join(f"{k['name']}的{k['attrname']}是{k['attrvalue']}" for k in doc["knowledge"]) or "无"
    turns = "\n".join(f"{'甲乙'[i % 2]}：{message}" for i, message in enumerate(doc["history"]))
    return f"根据知识进行对话。\n知识：{facts}\n{turns}\n{'甲乙'[len(doc['history']) % 2]}："


# ----- gold answers and scorers ----------------------------------------------------------------------------------


def ocnli_gold(doc: Doc) -> int:
    label = doc["label"]
    if isinstance(label, int) and 0 <= label < len(OCNLI_WORDS):
        return label
    if label not in OCNLI_WORDS:
        raise ValueError(f"label {label!r} is not one of {', '.join(OCNLI_WORDS)}")
    return list(OCNLI_WORDS).index(label)


def option_gold(doc: Doc, choices, gold) -> int:
    index = gold(doc)
    if not 0 <= index < len(choices(doc)):
        raise ValueError(f"answer {index} is outside the {len(choices(doc))} options")
    return index


def score_option(doc: Doc, prediction: ChoicePrediction, *, gold) -> dict[str, float]:
    return {"acc": float(prediction.chosen == gold(doc))}


def score_span(doc: Doc, prediction: str) -> dict[str, float]:
    answers = doc["answers"]["text"]
    return {"em": cmrc_em(prediction, answers), "f1": cmrc_f1(prediction, answers)}


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?")


def final_number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", "").replace("，", ""))
    if not found:
        return None
    numerator, _, denominator = found[-1].partition("/")
    return float(numerator) / float(denominator) if denominator and float(denominator) else float(numerator)


def score_math(doc: Doc, prediction: str) -> dict[str, float]:
    value, gold = final_number(prediction), float(doc["answer"])
    return {"acc": float(value is not None and math.isclose(value, gold, rel_tol=1e-4, abs_tol=1e-4))}


def score_summary(doc: Doc, prediction: str) -> dict[str, float]:
    references = [doc["summary"]]
    return {"rouge1": rouge_n(prediction, references, 1, zh_chars), "rouge2": rouge_n(prediction, references, 2,
            zh_chars), "rougeL": rouge_l(prediction, references, zh_chars)}


def eva_rouge_l(prediction: str, references: list[str], beta: float = KDCONV_ROUGE_BETA) -> float:
    """EVA's ROUGE-L on characters: F-beta of the best LCS precision and the best LCS recall over references."""
    predicted = zh_chars(prediction)
    lcs = [(lcs_length(zh_chars(r), predicted), len(zh_chars(r))) for r in references]
    precision = max(common / max(len(predicted), 1e-10) for common, _ in lcs)
    recall = max(common / max(length, 1e-10) for common, length in lcs)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def score_response(doc: Doc, prediction: str) -> dict[str, float]:
    references = [doc["response"]]
    return {"f1": unigram_f1(prediction, references, zh_chars), "rougeL": eva_rouge_l(prediction, references)}


def eva_corpus_metrics(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Corpus BLEU-4 (NLTK, smoothing method 3) and Distinct-3/4 on characters, per seed, then the seed mean."""
    seeds = len(samples[0]["predictions"])
    found: dict[str, list[float]] = {"bleu4": [], "dist3": [], "dist4": []}
    for seed in range(seeds):
        predictions = [sample["predictions"][seed] for sample in samples]
        references = [[zh_chars(r) for r in sample["references"]] for sample in samples]
        try:
            bleu = corpus_bleu(references, [zh_chars(p) for p in predictions],
                               smoothing_function=SmoothingFunction().method3)
        except ZeroDivisionError:  # every prediction empty: EVA counts it as 0 too
            bleu = 0.0
        found["bleu4"].append(100.0 * bleu)
        for n in (3, 4):
            distinct, total = distinct_n(predictions, n, zh_chars)
            found[f"dist{n}"].append(100.0 * distinct / total if total else 0.0)
    return {name: statistics.fmean(values) for name, values in found.items()}


# ----- tasks -----------------------------------------------------------------------------------------------------


def choice_task(name: str, description: str, data: DataSource, prompt, choices, gold, select=None) -> Task:
    return Task(name=name, description=description, data=data, prompt=prompt,
                references=lambda doc: [choices(doc)[option_gold(doc, choices, gold)]],
                scorer=partial(score_option, gold=gold), metrics=(seed_mean("acc"),), main_metric="acc",
                choices=choices, select=select)


def generation_task(name: str, description: str, data: DataSource, prompt, references, scorer,
                    sampling: SamplingSettings, metrics: tuple[Metric, ...], main_metric: str) -> Task:
    return Task(name=name, description=description, data=data, prompt=prompt, references=references,
                scorer=scorer, metrics=metrics, main_metric=main_metric, sampling=sampling)


LITE = ("cuge", "cuge_lite")


@register_task("cuge_c3", suites=LITE)
def cuge_c3() -> Task:
    data = DataSource("c3/c3-m-test.json", hub_id="clue/clue", hub_config="c3", split="validation", reader=read_c3)
    return choice_task("cuge_c3", "C3 multiple-choice reading comprehension, dialogue + mixed test (CUGE)", data,
                       c3_prompt, lambda doc: list(doc["choice"]), lambda doc: list(doc["choice"]).index(doc["answer"]))


@register_task("cuge_ccpm", suites=LITE)
def cuge_ccpm() -> Task:
    return choice_task("cuge_ccpm", "CCPM classical poetry matching, 4 options, labelled validation split (CUGE)",
                       DataSource("ccpm/valid.jsonl"), ccpm_prompt, lambda doc: list(doc["choices"]),
                       lambda doc: int(doc["answer"]))


@register_task("cuge_chid", suites=("cuge",))
def cuge_chid() -> Task:
    def choices(doc: Doc) -> list[str]:
        return [idiom + chid_parts(doc)[1] for idiom in doc["candidates"]]

    return choice_task("cuge_chid", "ChID idiom cloze over 7 candidates, FewCLUE public test (CUGE)",
                       DataSource("chid/test_public.json", reader=read_json_lines), chid_prompt, choices,
                       lambda doc: int(doc["answer"]))


@register_task("cuge_ocnli", suites=("cuge",))
def cuge_ocnli() -> Task:
    return choice_task("cuge_ocnli", "OCNLI 3-way inference, dev without '-' rows (CLUE, in the CUGE suite here)",
                       DataSource("ocnli/dev.json", hub_id="clue/clue", hub_config="ocnli", split="validation",
                                  reader=read_json_lines),
                       ocnli_prompt, lambda doc: list(OCNLI_WORDS.values()), ocnli_gold,
                       select=lambda rows: [row for row in rows if row["label"] not in ("-", -1)])


@register_task("cuge_cmrc2018", suites=("cuge",))
def cuge_cmrc2018() -> Task:
    data = DataSource("cmrc2018/cmrc2018_dev.json", hub_id="clue/clue", hub_config="cmrc2018", split="validation",
                      reader=read_cmrc)
    return generation_task("cuge_cmrc2018", "CMRC 2018 span extraction, dev, official EM/F1 (CUGE)", data,
                           cmrc_prompt, lambda doc: list(doc["answers"]["text"]), score_span, SPAN,
                           (seed_mean("em"), seed_mean("f1")), "f1")


@register_task("cuge_math23k", suites=LITE)
def cuge_math23k() -> Task:
    return generation_task("cuge_math23k", "Math23K word problems, 1,000-problem test, final-number accuracy (CUGE)",
                           DataSource("math23k/test23k_processed.json"), math23k_prompt, lambda doc: [doc["ans"]],
                           score_math, REASONING, (seed_mean("acc"),), "acc")


@register_task("cuge_lcsts", suites=LITE)
def cuge_lcsts() -> Task:
    return generation_task("cuge_lcsts", "LCSTS summarisation on PART II (10,666 pairs; CUGE scores PART III), "
                           "character ROUGE", DataSource("lcsts/test.src.txt", reader=read_lcsts), lcsts_prompt,
                           lambda doc: [doc["summary"]], score_summary, SUMMARY,
                           (seed_mean("rouge1"), seed_mean("rouge2"), seed_mean("rougeL")), "rougeL")


@register_task("cuge_kdconv", suites=LITE)
def cuge_kdconv() -> Task:
    return generation_task("cuge_kdconv", "KdConv knowledge-grounded dialogue, film/music/travel test turns, EVA "
                           "metrics (CUGE)", DataSource("kdconv/film/test.json", reader=read_kdconv), kdconv_prompt,
                           lambda doc: [doc["response"]], score_response, EVA_SAMPLING,
                           (eva_corpus_metrics, seed_mean("f1"), seed_mean("rougeL")), "bleu4")


# ----- the suites' score -----------------------------------------------------------------------------------------

DATASET_OF = {"cuge_c3": "c3", "cuge_ccpm": "ccpm", "cuge_chid": "chid", "cuge_ocnli": "ocnli",
              "cuge_cmrc2018": "cmrc2018", "cuge_math23k": "math23k", "cuge_lcsts": "lcsts", "cuge_kdconv": "kdconv"}


def cuge_aggregate(board: tuple[str, ...]):
    """The CUGE index of the tasks a model has (partial when some of `board` is missing); None until the
    mT5-small baselines of every present dataset are known."""

    def aggregate(scores: dict[str, float], tasks: list[str]) -> SuiteScore | None:
        raw = {DATASET_OF[task]: value for task, value in scores.items() if task in DATASET_OF}
        if not raw or any(name not in MT5_SMALL_BASELINES for name in raw):
            return None
        result = cuge_scores(raw, board=board)
        return SuiteScore(result.index, result.capabilities, result.partial)

    return aggregate


HIERARCHY_OF_TASKS = {task: (dataset, *HIERARCHY[dataset]) for task, dataset in DATASET_OF.items()}
register_suite("cuge", "CUGE datasets present here; CUGE index", cuge_aggregate(tuple(HIERARCHY)), "index",
               HIERARCHY_OF_TASKS)
register_suite("cuge_lite", "CUGE lite board (Sogou-Log, WMT20 En-Zh absent); CUGE index",
               cuge_aggregate(LITE_BOARD), "index",
               {task: levels for task, levels in HIERARCHY_OF_TASKS.items() if levels[0] in LITE_BOARD})
