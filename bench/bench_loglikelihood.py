"""Multiple-choice log-likelihood throughput: our transformers backend vs lm-eval's `HFLM.loglikelihood`.

Both sides run in this one process on the same checkpoint, questions, options, dtype and batch size (requests per
forward pass). Questions are passages of varied length followed by a question; each has `--options` short answers.
Ours runs each context once and reuses its KV cache for the options; HFLM runs every (context, option) in full.

    python bench/bench_loglikelihood.py --questions 500 --options 4 --batch-size 32
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.random_llama import add_model_arguments, build, machine, ours_and_peer, passage  # noqa: E402


def questions(count: int, options: int, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        context = passage(rng, 30, 300) + "\nQuestion: which word comes next?\nAnswer:"
        pairs += [(context, " " + " ".join(rng.choice(["apple", "river", "the answer", "two", "mountain", "yes"])
                                           for _ in range(rng.randint(1, 3)))) for _ in range(options)]
    return pairs


def timed(function, sync, repeats: int = 2) -> tuple[float, object]:
    """Best of `repeats` full runs: the first run on a GPU pays one-off costs for every new tensor shape (kernel
    selection, allocator growth) that would otherwise be charged to whichever side happens to run first."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = function()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, result


def paired(ours, peer, sync, pairs: int = 3) -> tuple[float, float, float, object, object]:
    """`ours()` and `peer()` run in turn, `pairs` times each, after the caller's warm-up: (median seconds of ours,
    of the peer, the median of the pairs' ratios peer/ours, the last outputs of each). On a shared machine whose
    speed drifts, a pair's two runs see about the same load, so the median pair ratio is the figure to read."""
    ours_s, peer_s = [], []
    for _ in range(pairs):
        seconds, ours_out = timed(ours, sync, repeats=1)
        ours_s.append(seconds)
        seconds, peer_out = timed(peer, sync, repeats=1)
        peer_s.append(seconds)
    return (statistics.median(ours_s), statistics.median(peer_s),
            statistics.median(p / o for o, p in zip(ours_s, peer_s)), ours_out, peer_out)


def race_loglikelihood(ours, peer, pairs, sync) -> tuple[float, float, float, int]:
    """Our backend and lm-eval's HFLM on the same (context, continuation) pairs after a warm-up: (our seconds, the
    peer's seconds, the largest log-prob difference, the tokens scored)."""
    from lm_eval.api.instance import Instance

    instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    ours.loglikelihood(pairs[:64], progress=False)  # warm-up: kernels, allocator
    peer.loglikelihood(instances[:64], disable_tqdm=True)
    ours_s, ours_out = timed(lambda: ours.loglikelihood(pairs, progress=False), sync)
    peer_s, peer_out = timed(lambda: peer.loglikelihood(instances, disable_tqdm=True), sync)
    gap = max(abs(a.logprob - b[0]) for a, b in zip(ours_out, peer_out))
    tokens = sum(len(ours.tokenizer(c + o).input_ids) for c, o in pairs)
    return ours_s, peer_s, gap, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--options", type=int, default=4)
    add_model_arguments(parser)
    args = parser.parse_args()
    folder = build(Path(tempfile.mkdtemp()) / "model", args.hidden, args.layers, args.dtype)
    device, sync, ours, peer = ours_and_peer(folder, args)
    pairs = questions(args.questions, args.options)
    ours_s, peer_s, gap, tokens = race_loglikelihood(ours, peer, pairs, sync)
    print(f"machine: {machine()}; device {device}, dtype {args.dtype}")
    size = sum(p.numel() for p in ours.model.parameters()) / 1e6
    print(f"model: random Llama, {size:.0f}M parameters (hidden {args.hidden}, {args.layers} layers, head_dim 64, "
          f"vocab {len(ours.tokenizer)})")
    print(f"{args.questions} questions x {args.options} options = {len(pairs)} requests ({tokens} tokens), "
          f"batch size {args.batch_size} on both sides; max |logprob difference| {gap:.2e}")
    print(f"ours: {ours_s:.2f} s ({len(pairs) / ours_s:.0f} req/s)   lm-eval HFLM: {peer_s:.2f} s "
          f"({len(pairs) / peer_s:.0f} req/s)   ratio ours/peer throughput: {peer_s / ours_s:.2f}x")
    print(f"ratio: {peer_s / ours_s:.2f}")  # ours / peer throughput, last for scripts


if __name__ == "__main__":
    main()
