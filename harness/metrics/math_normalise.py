"""String normalisation and exact number comparison for math answers: the cheap in-process fast path.

Everything here is pure Python on short strings (no sympy), so it is safe to call from any thread and cannot
hang: every regex is linear and numbers longer than `_MAX_NUMBER_CHARS` are not converted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_MAX_NUMBER_CHARS = 80
_REL_TOL = Fraction(1, 10**6)
# Units that answers append to a number; stripped only after a digit or closing brace so that a bare word
# answer (e.g. "m" as a variable) survives.
_UNITS = (
    "cm|mm|km|m|meters?|metres?|centimeters?|kilometers?|inches|inch|in|feet|foot|ft|yards?|miles?|mph|"
    "seconds?|sec|s|minutes?|min|hours?|hrs?|h|days?|weeks?|months?|years?|g|kg|grams?|kilograms?|pounds?|lbs?|"
    "dollars?|cents?|units?|square\\s*units|sq\\s*units|degrees?|liters?|litres?|ml|l|gallons?|ounces?|oz|"
    "people|students|pages|points|ways|times"
)
_POWER = r"(?:\^\{?\d\}?)?"
_TRAILING_UNIT = re.compile(
    r"(?<=[\d}])\s*(?:\\(?:text|mathrm|mbox|textbf)\{\s*(?:" + _UNITS + r")" + _POWER + r"\s*\}"
    r"|(?:" + _UNITS + r")" + _POWER + r")\s*$"
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|mathrm|mbox|textbf|textit|mathbf)\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,!;: ]|\\q?quad(?![a-zA-Z])|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|°|\\degree(?![a-zA-Z])")
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\[,!; ]\s*(?=\d{3}(?!\d))")
# A space matters only between two word characters ("\log_2 8" is not "\log_28"); elsewhere it goes.
_INNER_SPACE = re.compile(r"(?<!\w)\s+|\s+(?!\w)")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?[\w]+\}?)?\s*=(?!=)")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?$")
_DECIMAL = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$")
_SLASH_FRACTION = re.compile(r"^([+-]?\d+)/(\d+)$")
_LATEX_FRACTION = re.compile(r"^([+-]?)\\frac(?:\{([+-]?\d+)\}\{(\d+)\}|(\d)(\d))$")
_SCIENTIFIC = re.compile(r"^(.+?)(?:\\times|\\cdot)10\^\{?([+-]?\d+)\}?$")
_BRACKETS = {"(": ")", "[": "]", "\\{": "\\}"}
# Operators models write in Python or plain-text style, rewritten into the LaTeX that math-verify reads. Its LaTeX
# parser stops at them and keeps the prefix, a different number: "2**3" -> 2, "2^-1" -> 2, "1e10" -> 1*E*10.
# A power needs its operands adjacent, so Markdown bold ("**Answer:** 5") is left alone.
_SPACED_POWER = re.compile(r"\s*\*\*\s*")
_PYTHON_POWER = re.compile(r"(?<=[\w)}])\*\*(\((?:[^()]|\([^()]*\))*\)|[+-]?\d+(?:\.\d+)?|[A-Za-z]\w*)")
_BARE_EXPONENT = re.compile(r"\^([+-]\d+(?:\.\d+)?|\d+\.\d+)")
_E_NOTATION = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_BARE_FUNCTION = re.compile(r"(?<![\\a-zA-Z])(exp|ln|sin|cos|tan|pi)(?![a-zA-Z])")
# What is left of them after the rewrite has no LaTeX reading: such an answer is unparsable, not a prefix.
UNPARSABLE = re.compile(r"\*\*|//")


def latex_operators(text: str) -> str:
    """Python-style powers (`2**10`, `2^-1`) as LaTeX powers, in an answer or inside a whole completion."""
    return _BARE_EXPONENT.sub(r"^{\1}", _PYTHON_POWER.sub(r"^{\1}", text))


def answer_as_latex(answer: str) -> str:
    """An extracted answer with its non-LaTeX operators rewritten: spaced powers, `1e10`, bare `pi` or `exp`."""
    s = latex_operators(_SPACED_POWER.sub("**", answer))
    s = _E_NOTATION.sub(r"\1\\times10^{\2}", s)
    return _BARE_FUNCTION.sub(r"\\\1", s)


def normalise(answer: str) -> str:
    """Canonical form of an answer string: presentation (spacing, \\left, units, degrees, $) removed."""
    s = answer_as_latex(answer.strip()).replace("\\$", "").replace("$", "")
    s = s.replace("\\displaystyle", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("{,}", ",").replace("\\%", "%")
    s = _LEFT_RIGHT.sub("", s)
    s = _THIN_SPACE_THOUSANDS.sub("", s)
    s = _SPACING.sub(" ", s)
    s = _DEGREES.sub("", s)
    s = s.strip().rstrip(".").strip()
    for _ in range(2):  # "5 \text{cm}^2" and "12 square units" style double suffixes
        s = _TRAILING_UNIT.sub("", s)
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = _ASSIGNMENT.sub("", s) if s.count("=") == 1 else s
    s = _INNER_SPACE.sub("", s.strip())
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


@dataclass(frozen=True)
class Number:
    """An exactly parsed number; `inexact` marks decimals, which compare to 6 places as the spec asks."""

    value: Fraction
    inexact: bool
    percent: bool = False


def parse_number(s: str) -> Number | None:
    """A normalised plain number (int, decimal, a/b, \\frac{a}{b}, x\\times10^k, trailing %), else None."""
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    scientific = _SCIENTIFIC.match(s)
    if scientific:
        mantissa = parse_number(scientific.group(1))
        if mantissa is None or mantissa.percent:
            return None
        scaled = mantissa.value * Fraction(10) ** int(scientific.group(2))
        return Number(scaled, True, percent)
    value = _parse_plain(s)
    if value is None:
        return None
    return Number(value[0], value[1], percent)


def _parse_plain(s: str) -> tuple[Fraction, bool] | None:
    if _DECIMAL.match(s):
        return Fraction(s), ("." in s or "e" in s)
    slash = _SLASH_FRACTION.match(s)
    if slash and int(slash.group(2)) != 0:
        return Fraction(int(slash.group(1)), int(slash.group(2))), False
    frac = _LATEX_FRACTION.match(s)
    if frac:
        braced = frac.group(2) is not None
        num, den = (frac.group(2), frac.group(3)) if braced else (frac.group(4), frac.group(5))
        if int(den) == 0:
            return None
        sign = -1 if frac.group(1) == "-" else 1
        return sign * Fraction(int(num), int(den)), False
    return None


def numbers_equal(gold: Number, pred: Number) -> bool:
    """Exact for integers and fractions; when either side is a decimal, equal to 6 decimal places and to a
    relative 1e-6 (the latter keeps physics answers such as 1e-8 and 1e-9 apart).

    A percentage matches both its face value and its value / 100 (math-verify accepts both too).
    """
    gold_values = _percent_readings(gold)
    pred_values = _percent_readings(pred)
    inexact = gold.inexact or pred.inexact
    for g in gold_values:
        for p in pred_values:
            if g == p or (inexact and round(g, 6) == round(p, 6) and abs(g - p) <= _REL_TOL * max(abs(g), abs(p))):
                return True
    return False


def _percent_readings(n: Number) -> tuple[Fraction, ...]:
    return (n.value, n.value / 100) if n.percent else (n.value,)


def split_top_level(s: str) -> list[str]:
    """Split at commas that are not inside (), [] or {}."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _unwrap(s: str) -> tuple[str, str, str]:
    """Split an outer bracket pair off a list: ("(", "1,2", ")"), or ("", s, "") when there is none."""
    for left, right in _BRACKETS.items():
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            inner = s[len(left):-len(right)]
            if _balanced(inner):
                return left, inner, right
    if s[:1] in "([" and s[-1:] in ")]" and _balanced(s[1:-1]):
        return s[0], s[1:-1], s[-1]
    return "", s, ""


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0


def fast_equal(gold: str, pred: str) -> bool | None:
    """Decide equality of two normalised answers without sympy, or None when only sympy can tell."""
    if gold == pred and gold:
        return True
    g_num, p_num = parse_number(gold), parse_number(pred)
    if g_num is not None and p_num is not None:
        return numbers_equal(g_num, p_num)
    if g_num is not None or p_num is not None:
        return None
    g_open, g_inner, g_close = _unwrap(gold)
    p_open, p_inner, p_close = _unwrap(pred)
    if (g_open, g_close) != (p_open, p_close):
        return None
    g_items = [parse_number(x) for x in split_top_level(g_inner)]
    p_items = [parse_number(x) for x in split_top_level(p_inner)]
    if len(g_items) < 2 or None in g_items or None in p_items:
        return None
    if g_open in ("(", "["):  # tuples, points and intervals are ordered
        return len(g_items) == len(p_items) and all(map(numbers_equal, g_items, p_items))  # type: ignore[arg-type]
    return _same_set(g_items, p_items)  # type: ignore[arg-type]


def _same_set(gold: list[Number], pred: list[Number]) -> bool:
    """Set equality: every element of each side equals some element of the other."""
    return all(any(numbers_equal(g, p) for p in pred) for g in gold) and all(
        any(numbers_equal(g, p) for g in gold) for p in pred
    )
