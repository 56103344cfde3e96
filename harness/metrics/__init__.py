"""Public metrics. Scorers turn one sample into numbers; these are the reference-checked building blocks.

Imported lazily so that `import harness.metrics` stays cheap (the math verifier pulls in sympy).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "rouge_l": "harness.metrics.text",
    "exact_match": "harness.metrics.text",
    "normalize_answer": "harness.metrics.text",
    "rouge_l_many": "harness.metrics.text",
    "distinct_n": "harness.metrics.text",
    "rouge_n": "harness.metrics.text",
    "unigram_f1": "harness.metrics.text",
    "zh_chars": "harness.metrics.text",
    "cuge_index": "harness.metrics.cuge",
    "math_equal": "harness.metrics.math",
    "math_reward": "harness.metrics.math",
    "extract_answer": "harness.metrics.math",
    "pass_at_k": "harness.metrics.passk",
    "ece": "harness.metrics.calibration",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
