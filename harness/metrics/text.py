"""Text metrics for generation tasks: ROUGE-L, ROUGE-1/2, exact match, unigram F1 and Dist-n.

Every metric takes a tokenisation (`tokenize`, a function from text to tokens). The defaults keep the English
behaviour each metric always had; `zh_chars` is the character mode for Chinese (CUGE, EVA): each CJK character
is one token, a run of other letters or digits is one token (lower-cased), punctuation and spaces are dropped.

With its default tokenisation, `rouge_l` returns bit-for-bit the `rougeL` F-measure of Google's `rouge_score`
package with `use_stemmer=True` (its default tokenizer), max over references
(`rouge_n` likewise `rouge1`/`rouge2`). What differs is only speed, not results:

- tokens come from one `findall` of `[a-z0-9]+` on the lower-cased text, which yields exactly the tokens that
  `rouge_score` gets by replacing non-alphanumerics with spaces, splitting, and dropping empty tokens;
- Porter stems (NLTK's stemmer, the one `rouge_score` calls) are memoised per token in a dict;
- the LCS length comes from a bit-parallel recurrence on Python integers (Allison-Dix, in Hyyro's form)
  instead of the O(n*m) table, and the prediction is tokenised once for all references.

The precision/recall/F arithmetic repeats `rouge_score`'s operations in the same order, so floats are
identical.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable

from nltk.stem.porter import PorterStemmer

_TOKEN_RE = re.compile(r"[a-z0-9]+")
# rouge_score's last filter; re-checked on stems in case the stemmer ever returns something else.
_VALID_TOKEN_RE = re.compile(r"^[a-z0-9]+$")
_STEMMER = PorterStemmer()
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_STEM_CACHE_SIZE = 1 << 18


class _StemCache(dict):
    """token -> stem, or "" when rouge_score would drop the token.

    A dict lookup costs less than an lru_cache call, which matters at ~100 tokens per text. Emptied when full
    instead of evicting one by one: 2**18 distinct tokens are rare, and a miss only costs a recomputation.
    """

    def __missing__(self, token: str) -> str:
        if len(self) >= _STEM_CACHE_SIZE:
            self.clear()
        stem = _STEMMER.stem(token) if len(token) > 3 else token
        if not _VALID_TOKEN_RE.match(stem):
            stem = ""
        self[token] = stem
        return stem


_STEM_CACHE = _StemCache()


Tokenize = Callable[[str], list[str]]


def rouge_tokenize(text: str) -> list[str]:
    """Tokens as rouge_score's default tokenizer with the Porter stemmer produces them."""
    return list(filter(None, map(_STEM_CACHE.__getitem__, _TOKEN_RE.findall(text.lower()))))


# CJK Unified Ideographs with extension A, the compatibility block and the supplementary planes' extensions.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# One CJK character, or a run of word characters that are neither CJK nor "_" (letters of any script, digits).
_ZH_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def zh_chars(text: str) -> list[str]:
    """Character tokens for Chinese: '我喜欢NLP 2024!' -> ['我', '喜', '欢', 'nlp', '2024']."""
    return _ZH_TOKEN_RE.findall(text.lower())


def whitespace_tokenize(text: str) -> list[str]:
    """Lower-cased whitespace-separated words: Dist-n's tokens in MiniLLM's analysis."""
    return text.lower().split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit i of `masks[t]` says a[i] == t. V starts as all ones (-1: infinitely many in Python's two's
    complement); after each token of b, the zero bits of V in the low len(a) positions count the LCS so far.
    Bits above len(a) stay ones because `v - u` (that is, V & ~mask) keeps them, so the final count is the
    popcount of ~V.
    """
    if len(a) < len(b):
        a, b = b, a  # fewer Python-level steps: loop over the shorter, put the longer into bits
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    v = -1
    for token in b:
        mask = masks.get(token)
        if mask is not None:  # a token absent from `a` leaves V unchanged
            u = v & mask
            v = (v + u) | (v - u)
    return (~v).bit_count()


def _lcs_fmeasure(target: list[str], prediction: list[str]) -> float:
    """rouge_score's `_score_lcs(...).fmeasure`, same operations in the same order."""
    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction)
    precision = lcs / len(prediction)
    recall = lcs / len(target)
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _check_references(references: list[str], metric: str) -> None:
    if isinstance(references, str):
        raise ValueError(f"{metric} takes a list of reference strings; wrap one reference as [reference]")
    if len(references) == 0:
        raise ValueError(f"{metric} needs at least one reference; the sample has an empty reference list")


def rouge_l(prediction: str, references: list[str], tokenize: Tokenize = rouge_tokenize) -> float:
    """ROUGE-L F-measure (rouge_score `rougeL`, Porter stemmer on), max over references; in [0, 1]."""
    _check_references(references, "rouge_l")
    predicted = tokenize(prediction)
    return max(_lcs_fmeasure(tokenize(reference), predicted) for reference in references)


def rouge_l_many(predictions: list[str], references: list[list[str]],
                 tokenize: Tokenize = rouge_tokenize) -> list[float]:
    """`rouge_l` for each prediction against its own reference list."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions, {len(references)} reference lists; pair them 1:1")
    return [rouge_l(prediction, refs, tokenize) for prediction, refs in zip(predictions, references, strict=True)]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _overlap_fmeasure(overlap: int, predicted: int, target: int) -> float:
    """rouge_score's n-gram precision/recall/F arithmetic (empty sides count as 1 in the denominators)."""
    precision = overlap / max(predicted, 1)
    recall = overlap / max(target, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n(prediction: str, references: list[str], n: int = 1, tokenize: Tokenize = rouge_tokenize) -> float:
    """ROUGE-N F-measure (rouge_score `rouge1`/`rouge2`, Porter stemmer on), max over references; in [0, 1]."""
    _check_references(references, "rouge_n")
    if n < 1:
        raise ValueError(f"rouge_n needs n >= 1, got {n}")
    predicted = _ngrams(tokenize(prediction), n)
    scores = []
    for reference in references:
        target = _ngrams(tokenize(reference), n)
        overlap = sum((predicted & target).values())
        scores.append(_overlap_fmeasure(overlap, predicted.total(), target.total()))
    return max(scores)


def unigram_f1(prediction: str, references: list[str], tokenize: Tokenize = rouge_tokenize) -> float:
    """Bag-of-tokens F1 (EVA's `f1`: clipped unigram overlap), max over references; 0 when a side is empty."""
    _check_references(references, "unigram_f1")
    predicted = Counter(tokenize(prediction))
    scores = []
    for reference in references:
        target = Counter(tokenize(reference))
        overlap = sum((predicted & target).values())
        scores.append(0.0 if overlap == 0 else _overlap_fmeasure(overlap, predicted.total(), target.total()))
    return max(scores)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, collapse whitespace. Articles are kept (S-NI's normalisation)."""
    return " ".join(text.lower().translate(_PUNCT_TABLE).split())


def exact_match(prediction: str, references: list[str], tokenize: Tokenize | None = None) -> float:
    """1.0 if the prediction equals any reference, else 0.0: as normalised strings (`normalize_answer`) by
    default, as token lists when a tokenisation is given (`zh_chars`: punctuation and spaces ignored)."""
    _check_references(references, "exact_match")
    normalise = normalize_answer if tokenize is None else tokenize
    predicted = normalise(prediction)
    return float(any(normalise(reference) == predicted for reference in references))


def distinct_n(texts: list[str], n: int = 4, tokenize: Tokenize = whitespace_tokenize) -> tuple[int, int]:
    """(distinct n-grams, total n-grams) over all texts; n-grams never span two texts.

    Tokens are whitespace-separated after lower-casing by default. Dist-n is the ratio of the two; both counts
    are returned so a report can show them and so an empty corpus is not a division by zero here.
    """
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = tokenize(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen), total
