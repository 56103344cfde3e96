"""CMRC 2018 span-extraction scores, as the official evaluation script (ymcui/cmrc2018, `cmrc2018_evaluate.py`,
v5) computes them for one question; the corpus score is the mean x100.

- Segmentation ("mixed"): lower-case and strip; each character in U+4E00..U+9FA5 is one token, each listed
  punctuation mark is one token (or dropped, with `remove_punct`), and the text between them is split into words
  by NLTK's word tokenizer.
- F1: the longest common *contiguous* run of tokens (not a subsequence) between answer and prediction, both
  segmented with punctuation removed; precision and recall over the token counts; max over the answers.
- EM: the lower-cased, stripped strings with the listed punctuation removed are equal, for any answer.

Deviation: the script calls `nltk.word_tokenize`, which first splits sentences with the Punkt model (a download).
We run the same word tokenizer (`NLTKWordTokenizer`, what `word_tokenize` applies to each sentence) on the whole
run, so a run holding an inner sentence end ("a. b") keeps "a." whole; answer spans almost never contain one.
"""

from __future__ import annotations

import re

from nltk.tokenize import NLTKWordTokenizer

# The script's list, in its order: ASCII marks first, then full-width ones; "……" is two characters in the list's
# one entry, so it never matches a single character (kept as the script has it).
CMRC_PUNCTUATION = frozenset(["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！",
                              "“", "”", "；", "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～",
                              "『", "』"])
_HANZI = re.compile("[\u4e00-\u9fa5]")
_WORDS = NLTKWordTokenizer()


def mixed_segmentation(text: str, remove_punct: bool = False) -> list[str]:
    segments: list[str] = []
    pending = ""
    for char in text.lower().strip():
        if remove_punct and char in CMRC_PUNCTUATION:
            continue
        if _HANZI.match(char) or char in CMRC_PUNCTUATION:
            segments += _WORDS.tokenize(pending) if pending else []
            pending = ""
            segments.append(char)
        else:
            pending += char
    return segments + (_WORDS.tokenize(pending) if pending else [])


def remove_punctuation(text: str) -> str:
    return "".join(char for char in text.lower().strip() if char not in CMRC_PUNCTUATION)


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest common contiguous sub-list (the script's `find_lcs`)."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def cmrc_f1(prediction: str, answers: list[str]) -> float:
    predicted = mixed_segmentation(prediction, remove_punct=True)
    scores = [0.0]
    for answer in answers:
        target = mixed_segmentation(answer, remove_punct=True)
        common = longest_common_run(target, predicted)
        if common:
            precision, recall = common / len(predicted), common / len(target)
            scores.append(2 * precision * recall / (precision + recall))
    return max(scores)


def cmrc_em(prediction: str, answers: list[str]) -> float:
    predicted = remove_punctuation(prediction)
    return float(any(remove_punctuation(answer) == predicted for answer in answers))
