"""Throughput of `harness.metrics.rouge_l` against Google's `rouge_score` on the same pairs (not a test).

Three workloads: synthetic instruction-length texts (20-200 words, Zipf-distributed pseudo-words with English
inflections, fixed seed), real Dolly references, each paired with the next row's reference as prediction, and
LCSTS summaries the same way in the character mode for Chinese (`zh_chars`, given to rouge_score as its
tokenizer). The last line is the character-mode warm ratio.
Every score is checked for float equality with rouge_score before any number is printed.

Run: /tmp/venv/bin/python bench/bench_rouge.py [--pairs 5000] [--seed 0] [--dolly PATH] [--lcsts PATH]
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
DEFAULT_LCSTS = Path("/work/shared/data/lcsts/test.tgt.txt")
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


def next_row_pairs(outputs: list[str]) -> Pairs:
    return [(outputs[(i + 1) % len(outputs)], [ref]) for i, ref in enumerate(outputs)]


def dolly_pairs(path: Path) -> Pairs:
    return next_row_pairs([json.loads(line)["output"] for line in path.read_text().splitlines() if line.strip()])


class CharacterTokenizer:
    """`zh_chars` in the shape rouge_score's `tokenizer=` takes."""

    def tokenize(self, text_: str) -> list[str]:
        return text.zh_chars(text_)


def seconds(score: Callable[[str, list[str]], float], pairs: Pairs) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = [score(prediction, refs) for prediction, refs in pairs]
    return time.perf_counter() - start, scores


def compare(name: str, pairs: Pairs, peer: Callable[[str, list[str]], float], repeats: int,
            ours: Callable[[str, list[str]], float] = text.rouge_l) -> float:
    """Prints the throughputs; returns the warm ratio."""
    peer_s, peer_scores = seconds(peer, pairs)
    text._STEM_CACHE.clear()  # the first pass pays for every stem, as a fresh process would
    cold_s, ours_scores = seconds(ours, pairs)
    warm_s = min(seconds(ours, pairs)[0] for _ in range(repeats))
    if ours_scores != peer_scores:
        sys.exit(f"{name}: scores differ from rouge_score; the benchmark is void")
    words = sum(len(p.split()) + sum(len(r.split()) for r in refs) for p, refs in pairs) / len(pairs)
    mean = sum(ours_scores) / len(pairs)
    print(f"\n{name}: {len(pairs)} pairs, {words:.0f} words per pair, mean ROUGE-L {mean:.4f}")
    n = len(pairs)
    print(f"  rouge_score             {n / peer_s:8.0f} pairs/s")
    print(f"  ours, cold stem cache   {n / cold_s:8.0f} pairs/s  ratio {peer_s / cold_s:5.1f}x")
    print(f"  ours, warm, best of {repeats}   {n / warm_s:8.0f} pairs/s  ratio {peer_s / warm_s:5.1f}x")
    return peer_s / warm_s


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
    parser.add_argument("--lcsts", type=Path, default=DEFAULT_LCSTS)
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
    if not args.lcsts.exists():
        sys.exit(f"{args.lcsts} not found; the character-mode workload needs LCSTS summaries")
    characters = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CharacterTokenizer())

    def character_peer(prediction: str, references: list[str]) -> float:
        return characters.score_multi(references, prediction)["rougeL"].fmeasure

    def character_ours(prediction: str, references: list[str]) -> float:
        return text.rouge_l(prediction, references, text.zh_chars)

    summaries = args.lcsts.read_text(encoding="utf-8").splitlines()[: args.pairs]
    ratio = compare(f"lcsts characters ({args.lcsts})", next_row_pairs(summaries), character_peer, args.repeats,
                    character_ours)
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
