"""4-shot in-context classification scoring: our transformers backend vs lm-eval's `HFLM.loglikelihood`.

Both sides run in this one process on the same checkpoint, requests, dtype and batch size. The requests are the
PICL protocol's: for each seed, 4 demonstrations shared by every test document, then the document, then each label
word as " word\\n". Ours runs a seed's demonstrations once and every document and option on copies of their KV
cache; HFLM runs every (context, option) in full. `--tiny` uses the trained tiny teacher on the `icl_synth` rules
(the runner's own prompts); otherwise a random Llama of bench's usual shape on SST-2-like passages.

    python bench/bench_icl.py --documents 100 --seeds 5 --batch-size 32
    python bench/bench_icl.py --tiny --documents 100 --seeds 5 --batch-size 32
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_loglikelihood import race_loglikelihood  # noqa: E402
from bench.random_llama import add_model_arguments, build, machine, ours_and_peer, passage  # noqa: E402

WORDS = (" Negative\n", " Positive\n")


def passages_requests(documents: int, seeds: int, shots: int = 4) -> list[tuple[str, str]]:
    """Seed-major requests: each seed draws its demonstrations from a pool of labelled passages."""
    rng = random.Random(0)
    pool = [f"Sentence: {passage(rng, 15, 40)} Label:{rng.choice(WORDS)}" for _ in range(200)]
    tests = [f"Sentence: {passage(rng, 15, 40)} Label:" for _ in range(documents)]
    pairs = []
    for seed in range(seeds):
        shown = "".join(random.Random(seed).sample(pool, shots))
        pairs += [(shown + test, word) for test in tests for word in WORDS]
    return pairs


def tiny_requests(documents: int, seeds: int) -> tuple[Path, list[tuple[str, str]]]:
    from harness import tiny
    from harness.runner import EvalConfig, plan, seed_prompts

    config = EvalConfig(tasks="icl_synth", limit=documents, seeds=tuple(10 * (i + 1) for i in range(seeds)))
    pairs = []
    for item in plan(config):
        options = item.task.choices(item.docs[0])
        pairs += [(prompt, option) for one_seed in zip(*seed_prompts(item, config.seeds)) for prompt in one_seed
                  for option in options]
    return tiny.build().teacher, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100, help="test documents (per task with --tiny)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="the tiny teacher on the icl_synth rules")
    add_model_arguments(parser)
    args = parser.parse_args()

    if args.tiny:
        folder, pairs = tiny_requests(args.documents, args.seeds)
    else:
        folder = build(Path(tempfile.mkdtemp()) / "model", args.hidden, args.layers, args.dtype)
        pairs = passages_requests(args.documents, args.seeds)
    device, sync, ours, peer = ours_and_peer(folder, args)
    ours_s, peer_s, gap, tokens = race_loglikelihood(ours, peer, pairs, sync)
    kind = "tiny teacher, icl_synth prompts" if args.tiny else f"random Llama ({args.hidden} x {args.layers} layers)"
    print(f"machine: {machine()}; device {device}, dtype {args.dtype}")
    print(f"model: {kind}; {len(pairs)} requests ({tokens / len(pairs):.0f} tokens each on average), "
          f"{args.seeds} seeds x 4 shots, batch size {args.batch_size} on both sides; "
          f"max |logprob difference| {gap:.2e}")
    print(f"ours: {ours_s:.2f} s ({len(pairs) / ours_s:.0f} req/s)   lm-eval HFLM: {peer_s:.2f} s "
          f"({len(pairs) / peer_s:.0f} req/s)")
    print(f"ratio: {peer_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
