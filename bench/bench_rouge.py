"""Throughput of `harness.metrics.rouge_l` against Google's `rouge_score` on the same pairs (not a test).

Two workloads: synthetic instruction-length texts (20-200 words, Zipf-distributed pseudo-words with English
inflections, fixed seed), and real Dolly references, each paired with the next row's reference as prediction.
Every score is checked for float equality with rouge_score before any number is printed.

Run: /tmp/venv/bin/python bench/bench_rouge.py [--pairs 5000] [--seed 0] [--dolly PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rouge_score import rouge_scorer

from harness.metrics import text

Pairs = list[tuple[str, list[str]]]
DEFAULT_DOLLY = Path("/work/shared/data/dolly/valid.jsonl")
SUFFIXES = ["", "", "", "s", "ed", "ing", "ly", "er", "ation", "ness"]


def synthetic_pairs(count: int, seed: int) -> Pairs:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ten", "ra", "su", "pe", "dor", "an", "vi", "gul", "ho", "ne", "tra", "es"]
    vocab = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    weights = [1 / rank for rank in range(1, len(vocab) + 1)]  # Zipf, like word frequencies in real text

    def sentence() -> str:
        words = rng.choices(vocab, weights=weights, k=rng.randint(20, 200))
        return " ".join(w + rng.choice(SUFFIXES) for w in words) + "."

    return [(sentence(), [sentence()]) for _ in range(count)]


def dolly_pairs(path: Path) -> Pairs:
    outputs = [json.loads(line)["output"] for line in path.read_text().splitlines() if line.strip()]
    return [(outputs[(i + 1) % len(outputs)], [ref]) for i, ref in enumerate(outputs)]


def seconds(score: Callable[[str, list[str]], float], pairs: Pairs) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = [score(prediction, refs) for prediction, refs in pairs]
    return time.perf_counter() - start, scores


def compare(name: str, pairs: Pairs, peer: Callable[[str, list[str]], float], repeats: int) -> None:
    peer_s, peer_scores = seconds(peer, pairs)
    text._STEM_CACHE.clear()  # the first pass pays for every stem, as a fresh process would
    cold_s, ours_scores = seconds(text.rouge_l, pairs)
    warm_s = min(seconds(text.rouge_l, pairs)[0] for _ in range(repeats))
    if ours_scores != peer_scores:
        sys.exit(f"{name}: scores differ from rouge_score; the benchmark is void")
    words = sum(len(p.split()) + sum(len(r.split()) for r in refs) for p, refs in pairs) / len(pairs)
    mean = sum(ours_scores) / len(pairs)
    print(f"\n{name}: {len(pairs)} pairs, {words:.0f} words per pair, mean ROUGE-L {mean:.4f}")
    n = len(pairs)
    print(f"  rouge_score             {n / peer_s:8.0f} pairs/s")
    print(f"  ours, cold stem cache   {n / cold_s:8.0f} pairs/s  ratio {peer_s / cold_s:5.1f}x")
    print(f"  ours, warm, best of {repeats}   {n / warm_s:8.0f} pairs/s  ratio {peer_s / warm_s:5.1f}x")


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}; {os.cpu_count()} logical CPUs; Python {platform.python_version()}; {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dolly", type=Path, default=DEFAULT_DOLLY)
    args = parser.parse_args()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def peer(prediction: str, references: list[str]) -> float:
        return scorer.score_multi(references, prediction)["rougeL"].fmeasure

    print(f"machine: {machine()}")
    compare("synthetic", synthetic_pairs(args.pairs, args.seed), peer, args.repeats)
    if args.dolly.exists():
        compare(f"dolly ({args.dolly})", dolly_pairs(args.dolly), peer, args.repeats)
    else:
        print(f"\n{args.dolly} not found; Dolly workload skipped")


if __name__ == "__main__":
    main()
