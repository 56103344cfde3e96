"""MiniLLM rollouts: the trainers' torch sampling loop vs the vLLM engines (`rollout_backend=vllm`).

Both sides sample the same prompts with the same settings: teacher-mixed (alpha 0.2, the paper's) and student-only
(alpha 0), temperature 1, after a warm-up each, alternating. The torch loop runs `--batch` prompts at a time
(MiniLLM's rollout_batch_size), the engines take them all at once and schedule them themselves. Reported: sampled
tokens per second at best over the repeats (the run least disturbed on a shared machine), and the ratio
engines / torch. The default models are the tiny student (untrained, so it rarely stops early) and teacher.

    python bench/bench_rollouts.py [--student PATH --teacher PATH] [--prompts 64] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_vllm_overhead import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", help="HF checkpoint folder (default: the tiny student)")
    parser.add_argument("--teacher", help="HF checkpoint folder of the same tokenizer (default: the tiny teacher)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="prompts per torch sampling call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from harness.tiny import build
    from harness.tiny_data import generate as tiny_rows
    from harness.trainers.data import chunked, encode_prompt, left_pad
    from harness.trainers.engine_sampling import EngineSampler
    from harness.trainers.loading import load_model, load_tokenizer
    from harness.trainers.sampling import sample

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (args.student and args.teacher):
        tiny = build(progress=False)
        args.student, args.teacher = args.student or str(tiny.student), args.teacher or str(tiny.teacher)
    tokenizer = load_tokenizer(args.student)
    rows = tiny_rows(seed=0)["train"]
    prompts = [encode_prompt(tokenizer, rows[i % len(rows)]["prompt"], 256) for i in range(args.prompts)]
    ids = {"eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id}
    student, teacher = (load_model(path).to(device).eval() for path in (args.student, args.teacher))
    engines = EngineSampler(args.student, args.teacher, len(tokenizer), 256 + args.new_tokens, seed=0)

    def torch_loop(alpha: float) -> int:
        tokens = 0
        for part in chunked(prompts, args.batch):
            prompt_ids, mask = left_pad(part, tokenizer.pad_token_id)
            rollout = sample(student, prompt_ids.to(device), mask.to(device), vocab_size=len(tokenizer),
                             max_new_tokens=args.new_tokens, mixer=teacher if alpha else None, mix_alpha=alpha, **ids)
            tokens += int(rollout.response_mask.sum())
        return tokens

    def through_engines(alpha: float) -> int:
        rollout = engines.sample(prompts, generator=torch.Generator().manual_seed(0), max_new_tokens=args.new_tokens,
                                 mix_alpha=alpha, **ids)
        return int(rollout.response_mask.sum())

    print(f"machine: {machine()}")
    print(f"student {args.student}, teacher {args.teacher}; {args.prompts} prompts x up to {args.new_tokens} "
          f"new tokens, temperature 1, torch batch {args.batch}, {args.repeats} repeats")
    for alpha in (0.2, 0.0):
        best: dict[str, float] = {}
        sides = {"torch": torch_loop, "engines": through_engines}
        for run in sides.values():
            run(alpha)  # warm-up
        for _ in range(args.repeats):
            for name, run in sides.items():
                start = time.perf_counter()
                tokens = run(alpha)
                best[name] = max(best.get(name, 0.0), tokens / (time.perf_counter() - start))
        print(f"alpha {alpha}: torch {best['torch']:8.1f} tokens/s, engines {best['engines']:8.1f} tokens/s, "
              f"ratio engines/torch {best['engines'] / best['torch']:.2f}")
    engines.close()
    print(f"ratio: {best['engines'] / best['torch']:.2f}")  # engines / torch loop, student-only (alpha 0), last


if __name__ == "__main__":
    main()
