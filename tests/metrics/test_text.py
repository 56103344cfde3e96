"""Text metrics against references: rouge_score for ROUGE-L (exact float equality), tables for the rest."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer

from harness.metrics.text import (
    distinct_n,
    exact_match,
    lcs_length,
    normalize_answer,
    rouge_l,
    rouge_l_many,
    rouge_n,
    unigram_f1,
    zh_chars,
)

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

# Inflected families so that stemming decides matches; short words (<= 3 chars) are never stemmed.
STEMS = "run generalize connect happy argue sky die study organize relate news".split()
SUFFIXES = ["", *"s es ed ing er ers ly ness ation ations ies ied ational".split()]
EXTRA = (
    "the a an of is it its was has dog cat ran running skies dying generously café naïve Ärger straße "
    "İstanbul \u212aelvin 日本語 don't snake_case e-mail U.S.A. 3.14 2024 abc123 x1 ... -- !? ( A THE Running"
).split() + ["\t", "\n", '"quoted"']
VOCAB = [stem + suffix for stem in STEMS for suffix in SUFFIXES] + EXTRA


def reference_rouge_l(prediction: str, references: list[str]) -> float:
    return SCORER.score_multi(references, prediction)["rougeL"].fmeasure


def random_text(rng: random.Random, n_words: int) -> str:
    words = rng.choices(VOCAB, k=n_words)
    if words and rng.random() < 0.3:  # runs of a repeated word stress repeated-token LCS paths
        i = rng.randrange(len(words))
        words[i:i] = [words[i]] * rng.randint(1, 5)
    separators = [" ", " ", " ", ", ", ". ", "\n", "  ", "-"]
    return "".join(w + rng.choice(separators) for w in words).strip()


def mutate(rng: random.Random, text: str) -> str:
    """A reference that shares much of the prediction, so LCS values are large and varied."""
    words = text.split()
    out = [w for w in words if rng.random() > 0.3]
    for _ in range(rng.randint(0, 5)):
        out.insert(rng.randint(0, len(out)), rng.choice(VOCAB))
    return " ".join(w.upper() if rng.random() < 0.1 else w for w in out)


def generated_pairs(seed: int, count: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        prediction = random_text(rng, rng.choice([0, 1, 2, 5, 10, 20, 40, 80, 150]))
        references = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            kind = rng.random()
            if kind < 0.45:
                references.append(mutate(rng, prediction))
            elif kind < 0.9:
                references.append(random_text(rng, rng.randint(0, 100)))
            else:
                references.append(rng.choice(["", " ", "...", "?!", "日本語", "\u212a", prediction]))
        pairs.append((prediction, references))
    return pairs


def test_rouge_l_equals_rouge_score_on_generated_pairs():
    pairs = generated_pairs(seed=1234, count=2000)
    mismatches = [(p, r) for p, r in pairs if rouge_l(p, r) != reference_rouge_l(p, r)]
    assert not mismatches, mismatches[:3]
    # the sample covers many distinct scores, not just 0 and 1
    assert len({rouge_l(p, r) for p, r in pairs}) > 200


def test_rouge_l_equals_rouge_score_on_long_texts():
    rng = random.Random(7)
    long_a = random_text(rng, 2000)
    long_b = mutate(rng, long_a)
    cases = [(long_a, [long_b]), (long_b, [random_text(rng, 50), long_a]), (random_text(rng, 30), [long_a])]
    for prediction, references in cases:
        assert rouge_l(prediction, references) == reference_rouge_l(prediction, references)


EDGE_CASES = [
    ("", [""]),
    ("", ["a reference"]),
    ("a prediction", [""]),
    ("...!!!", ["?? -- ;;"]),
    ("   \t\n ", ["word"]),
    ("The cat sat on the mat.", ["The cat sat on the mat."]),
    ("THE CAT SAT", ["the cat sat"]),
    ("the cats are running", ["a cat runs"]),
    ("generously organizational studies", ["generous organization study"]),
    ("skies dying news", ["sky die new"]),
    ("its was has", ["it wa ha"]),  # 3-letter words are not stemmed, though Porter would change them
    ("café naïve Ärger straße", ["cafe naive arger strasse"]),
    ("\u212aelvin İstanbul", ["kelvin istanbul"]),  # non-ASCII letters that lower-case to ASCII
    ("日本語 only", ["only 日本語"]),
    ("snake_case e-mail U.S.A. don't", ["snake case e mail u s a don t"]),
    ("3.14 is pi 2024", ["pi is 3 14"]),
    ("abc123 x1 abc", ["abc123 abc x1"]),
    ("a b c d", ["d c b a"]),
    ("a a a a b", ["a b a b a b"]),
    ("one two three", ["nothing shared", "one three", "one two"]),
    ("one two three", ["", "...", "three"]),
    ("x " * 70, ["x " * 65 + "y"]),  # LCS beyond 64 bits of one machine word
]


@pytest.mark.parametrize(("prediction", "references"), EDGE_CASES)
def test_rouge_l_edge_cases_equal_rouge_score(prediction: str, references: list[str]):
    score = rouge_l(prediction, references)
    assert isinstance(score, float)
    assert score == reference_rouge_l(prediction, references)


def test_rouge_l_known_values():
    assert rouge_l("The cat sat on the mat.", ["the cat sat on the mat"]) == 1.0
    assert rouge_l("", ["anything"]) == 0.0
    assert rouge_l("a b", ["x y", "a b"]) == 1.0  # max over references, not the first


def test_rouge_l_rejects_missing_references():
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l("text", [])
    with pytest.raises(ValueError, match="list of reference strings"):
        rouge_l("text", "a bare string")  # type: ignore[arg-type]


def test_rouge_l_many_matches_per_sample_and_checks_lengths():
    pairs = generated_pairs(seed=99, count=50)
    predictions = [p for p, _ in pairs]
    references = [r for _, r in pairs]
    assert rouge_l_many(predictions, references) == [reference_rouge_l(p, r) for p, r in pairs]
    with pytest.raises(ValueError, match="pair them"):
        rouge_l_many(predictions, references[:-1])


def table_lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            current = row[j]
            row[j] = previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
            previous_diagonal = current
    return row[-1]


def test_lcs_length_matches_dynamic_programming_on_small_alphabets():
    rng = random.Random(5)
    for _ in range(300):
        a = rng.choices("abc", k=rng.randint(0, 150))
        b = rng.choices("abcd", k=rng.randint(0, 150))
        assert lcs_length(a, b) == table_lcs(a, b)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Answer.", "the answer"),
        ("  a   cat\tsat\n", "a cat sat"),
        ("don't!", "dont"),
        ("U.S.A.", "usa"),
        ("an apple", "an apple"),  # articles are kept
        ("...", ""),
        ("Ärger, café", "ärger café"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, normalized: str):
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("Paris", ["paris"], 1.0),
        ("Paris.", ["  PARIS "], 1.0),
        ("the Paris", ["Paris"], 0.0),  # articles kept, so this is not a match
        ("Lyon", ["Paris", "lyon!"], 1.0),
        ("Lyon", ["Paris", "Marseille"], 0.0),
        ("", [""], 1.0),
        ("", ["x"], 0.0),
        ("New  York", ["new york"], 1.0),
        ("New-York", ["new york"], 0.0),  # punctuation is deleted, not turned into a space
    ],
)
def test_exact_match(prediction: str, references: list[str], expected: float):
    assert exact_match(prediction, references) == expected


def test_exact_match_rejects_missing_references():
    with pytest.raises(ValueError, match="at least one reference"):
        exact_match("x", [])


def direct_ngram_count(texts: list[str], n: int) -> tuple[int, int]:
    grams = []
    for text in texts:
        tokens = text.lower().split()
        grams += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]  # fmt: skip
    return len(set(grams)), len(grams)


def test_distinct_n_against_direct_count():
    rng = random.Random(3)
    texts = [" ".join(rng.choices(["a", "b", "C", "c", "d"], k=rng.randint(0, 12))) for _ in range(200)]
    for n in (1, 2, 3, 4):
        assert distinct_n(texts, n) == direct_ngram_count(texts, n)


def test_distinct_n_hand_examples():
    assert distinct_n(["a b c d e", "A B C D E"], 4) == (2, 4)  # lower-cased, so both texts repeat
    assert distinct_n(["a b c", "d e f"], 4) == (0, 0)  # n-grams never cross texts
    assert distinct_n(["x y x y x y"], 2) == (2, 5)
    assert distinct_n([], 4) == (0, 0)
    with pytest.raises(ValueError, match="n >= 1"):
        distinct_n(["a"], 0)


# ----- ROUGE-1/2 and the character mode for Chinese ---------------------------------------------------------------


class _ZhTokenizer:
    """Our character tokenisation in the shape rouge_score's `tokenizer=` argument takes."""

    def tokenize(self, text: str) -> list[str]:
        return zh_chars(text)


def test_rouge_n_equals_rouge_score_on_generated_pairs():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)
    for prediction, references in generated_pairs(seed=77, count=400):
        expected = scorer.score_multi(references, prediction)
        assert rouge_n(prediction, references, 1) == expected["rouge1"].fmeasure
        assert rouge_n(prediction, references, 2) == expected["rouge2"].fmeasure


ZH_PAIRS = [
    ("我喜欢猫", ["我喜欢猫"]),
    ("我很喜欢小猫。", ["我喜欢猫，也喜欢狗！"]),
    ("北京是中国的首都", ["中国的首都是北京", "首都北京"]),
    ("GPT-4在2023年发布", ["2023年, OpenAI发布了GPT-4"]),
    ("", ["空"]),
    ("。。。", ["！"]),
]


@pytest.mark.parametrize(("prediction", "references"), ZH_PAIRS)
def test_character_mode_equals_rouge_score_given_the_same_tokens(prediction: str, references: list[str]):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_ZhTokenizer())
    expected = scorer.score_multi(references, prediction)
    assert rouge_l(prediction, references, zh_chars) == expected["rougeL"].fmeasure
    assert rouge_n(prediction, references, 1, zh_chars) == expected["rouge1"].fmeasure
    assert rouge_n(prediction, references, 2, zh_chars) == expected["rouge2"].fmeasure


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("我喜欢猫", ["我", "喜", "欢", "猫"]),
        ("我喜欢NLP和Python3！", ["我", "喜", "欢", "nlp", "和", "python3"]),
        ("GPT-4 在 2023 年", ["gpt", "4", "在", "2023", "年"]),
        ("“你好”，世界。", ["你", "好", "世", "界"]),
        ("3.14", ["3", "14"]),
        ("snake_case café", ["snake", "case", "café"]),
        ("𠀀㐀", ["𠀀", "㐀"]),  # CJK extensions B and A
        ("，。！？", []),
    ],
)
def test_zh_chars(text: str, tokens: list[str]):
    assert zh_chars(text) == tokens


def test_character_mode_hand_computed_values():
    # The default tokenisation finds no tokens in Chinese text; characters do.
    assert rouge_l("我喜欢猫", ["我喜欢猫"]) == 0.0
    assert rouge_l("我喜欢猫", ["我喜欢猫"], zh_chars) == 1.0
    # LCS(我很喜欢小猫, 我喜欢猫也喜欢狗) = 我喜欢猫 (4): P 4/6, R 4/8, F 4/7
    assert rouge_l("我很喜欢小猫。", ["我喜欢猫，也喜欢狗！"], zh_chars) == pytest.approx(4 / 7)
    # bigrams 我喜 喜欢 欢猫 vs 我喜 喜欢 欢狗: overlap 2 of 3 each side
    assert rouge_n("我喜欢猫", ["我喜欢狗"], 2, zh_chars) == pytest.approx(2 / 3)
    # unigram F1: overlap 我 喜 欢 = 3 of 4 each side
    assert unigram_f1("我喜欢猫", ["我喜欢狗"], zh_chars) == pytest.approx(0.75)
    # clipped counts: 哈哈哈 vs 哈: overlap 1, P 1/3, R 1
    assert unigram_f1("哈哈哈", ["哈"], zh_chars) == pytest.approx(0.5)
    assert unigram_f1("", ["哈"], zh_chars) == 0.0
    assert exact_match("北京。", ["北 京"], zh_chars) == 1.0
    assert exact_match("北京市", ["北京"], zh_chars) == 0.0
    assert distinct_n(["我喜欢猫猫", "猫猫"], 2, zh_chars) == (4, 5)  # 我喜 喜欢 欢猫 猫猫 | 猫猫
    assert distinct_n(["我喜欢猫"], 2) == (0, 0)  # whitespace words: one word, no bigram


def test_unigram_f1_default_tokens_are_rouge_words():
    assert unigram_f1("The cats ran", ["the cat runs"]) == pytest.approx(2 / 3)  # the, cat match after stemming
