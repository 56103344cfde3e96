"""Generated completions for checking `verify_completions` against math-verify: each gold answer written in several
styles models use (boxed, unboxed LaTeX, plain text, Markdown, several boxes, Python powers), right and wrong.

`python tests/metrics/math_completions.py` prints the agreement with math-verify and every difference
(the figure in docs/math.md).
"""

from __future__ import annotations

import logging
import sys

# (gold as data sets store it, the same answer as a model might write it, a wrong answer)
ANSWERS = [
    ("18", "18", "19"),
    ("-7", "-7", "7"),
    ("1000", "1,000", "100"),
    ("0.5", "\\frac{1}{2}", "\\frac{1}{3}"),
    ("\\frac{3}{4}", "0.75", "0.7"),
    ("\\frac{14}{3}", "\\dfrac{14}{3}", "\\frac{3}{14}"),
    ("2.5", "\\frac{5}{2}", "2.25"),
    ("\\sqrt{2}", "\\sqrt{2}", "\\sqrt{3}"),
    ("2\\sqrt{3}", "\\sqrt{12}", "3\\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{2}}{2}"),
    ("3\\pi", "3\\pi", "2\\pi"),
    ("\\frac{\\pi}{4}", "\\frac{\\pi}{4}", "\\frac{\\pi}{2}"),
    ("(1, 2)", "(1,2)", "(2,1)"),
    ("(3, -4)", "(3,-4)", "(-4,3)"),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}", "\\{1, 2\\}"),
    ("[2, 5)", "[2,5)", "(2,5]"),
    ("(-\\infty, 3]", "(-\\infty,3]", "(-\\infty,3)"),
    ("x \\geq 5", "x \\ge 5", "x > 5"),
    ("x < -2", "x<-2", "x > -2"),
    ("12.5\\%", "12.5\\%", "15\\%"),
    ("50\\%", "50\\%", "40\\%"),
    ("x^2+2x+1", "(x+1)^2", "(x-1)^2"),
    ("\\frac{1}{2n+2}", "\\frac{1}{2(n+1)}", "\\frac{1}{2n+1}"),
    ("2x-3", "-3+2x", "3-2x"),
    ("1024", "2^{10}", "2^{11}"),
    ("10^{6}", "1000000", "100000"),
    ("\\frac{1}{8}", "2^{-3}", "2^{-2}"),
    ("e^{2}", "e^2", "e^{3}"),
    ("\\ln 2", "\\ln 2", "\\ln 3"),
    ("90^\\circ", "90^{\\circ}", "45^\\circ"),
    ("5", "x=5", "x=6"),
    ("36", "36", "63"),
    ("4.5", "4.50", "4.05"),
    ("-\\frac{1}{2}", "-0.5", "0.5"),
    ("\\frac{7}{8}", "0.875", "0.87"),
    ("100", "100", "1000"),
    ("0", "0", "1"),
    ("204", "204", "240"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
     "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
    ("3, 5", "3, 5", "3, 6"),
]

STYLES = {
    "boxed": "Let us compute step by step. Adding everything up gives the result.\nThe final answer is \\boxed{{{a}}}.",
    "dollar_boxed": "We simplify and get $\\boxed{{{a}}}$",
    "latex_final": "After simplifying, the answer is ${a}$.",
    "therefore": "Combining the two cases with 7 and 9 above, therefore ${a}$ is the solution.",
    "display": "Putting it together,\n\\[\n{a}\n\\]",
    "markdown": "**Step 1.** Compute 3 and 4.\n\n**Final Answer:** ${a}$",
    "two_boxes": "First \\boxed{{17}} was wrong; correcting, \\boxed{{{a}}}",
    "boxed_then_text": "So \\boxed{{{a}}}. I hope it is correct.",
    "plain_text": "The answer is {a}",
    "fbox": "Hence \\fbox{{{a}}}.",
}


# Answers written with Python operators, where math-verify's LaTeX parser reads a prefix or a bare string.
PYTHON_OPERATORS = [
    ("1024", "So the answer is \\boxed{2**10}.", True),
    ("2", "So the answer is \\boxed{2**10}.", False),
    ("1024", "The answer is $2**10$.", True),
    ("2", "The answer is $2**10$.", False),
    ("8", "**Final Answer:** $2**3$", True),
    ("2", "**Final Answer:** $2**3$", False),
    ("\\frac{1}{2}", "We get \\boxed{2^-1}", True),
    ("2", "We get \\boxed{2^-1}", False),
    ("\\sqrt{2}", "Hence \\boxed{2**(1/2)}", True),
    ("10^{10}", "Hence \\boxed{10**10}", True),
    ("10^{11}", "Hence \\boxed{10**10}", False),
]


def completions() -> list[tuple[str, str, str, bool]]:
    """(gold, completion, style, whether the written answer is the gold one), right and wrong for each style."""
    rows = []
    for gold, written, wrong in ANSWERS:
        for style, template in STYLES.items():
            rows.append((gold, template.format(a=written), style, True))
            rows.append((gold, template.format(a=wrong), style, False))
    rows += [(gold, text, "python_operators", right) for gold, text, right in PYTHON_OPERATORS]
    return rows


def compare() -> tuple[list[tuple[str, str, str, bool]], list[bool], list]:
    """The rows, math-verify's verdicts (parse the gold as `$gold$`, parse the completion, verify) and ours."""
    from math_verify import parse, verify

    from harness.metrics.math import verify_completions

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    rows = completions()
    reference = [bool(verify(parse(f"${gold}$"), parse(text))) for gold, text, _, _ in rows]
    ours = verify_completions([(gold, text) for gold, text, _, _ in rows])
    return rows, reference, ours


def main() -> None:
    rows, reference, ours = compare()
    differ = [i for i in range(len(rows)) if reference[i] != ours[i].correct]
    print(f"{len(rows) - len(differ)} of {len(rows)} agree with math-verify "
          f"({100 * (len(rows) - len(differ)) / len(rows):.1f}%)")
    for i in differ:
        gold, text, style, _ = rows[i]
        print(f"{style}: gold {gold!r}, completion {text!r}: math-verify {reference[i]}, ours {ours[i]}")


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    main()
