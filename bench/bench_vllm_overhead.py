"""What our vLLM backend costs on top of a raw `vllm.LLM.generate` call on the same engine.

Both sides decode the same prompts with the same greedy settings on one engine, alternating, after a warm-up
each. The fastest repeat of each side is reported as generated tokens per second, with their ratio (ours / raw):
on a shared machine the fastest run is the one least disturbed by other work, and the median is printed too.
The default model is the tiny untrained student, which almost never emits end-of-text, so every request runs
to the full token budget.

    python bench/bench_vllm_overhead.py [--model PATH] [--prompts 200] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def machine() -> str:
    import torch
    import vllm

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"{device}; vllm {vllm.__version__}, torch {torch.__version__}"


def timed(run) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = run()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF checkpoint folder (default: the tiny student)")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from vllm import SamplingParams

    from harness.backends.base import GenerationRequest, SamplingSettings
    from harness.backends.vllm import VLLMBackend
    from harness.tiny import build
    from harness.tiny_data import generate as tiny_rows

    model = args.model or str(build(progress=False).student)
    rows = tiny_rows(seed=0)["train"]
    prompts = [rows[i % len(rows)]["prompt"] for i in range(args.prompts)]
    backend = VLLMBackend(model)
    settings = SamplingSettings(max_new_tokens=args.new_tokens)
    requests = [GenerationRequest(prompt, settings) for prompt in prompts]
    raw_params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0)

    def raw() -> int:
        outputs = backend.engine.generate(prompts, raw_params, use_tqdm=False)
        return sum(len(output.outputs[0].token_ids) for output in outputs)

    def ours() -> int:
        return sum(completion.num_tokens for completion in backend.generate(requests, progress=False))

    raw(), ours()  # warm-up: first calls pay for allocation and lazy initialisation
    times: dict[str, list[float]] = {"raw": [], "ours": []}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, run in (("raw", raw), ("ours", ours)):
            seconds, tokens[name] = timed(run)
            times[name].append(seconds)
    backend.close()

    throughput = {name: tokens[name] / min(times[name]) for name in times}
    median = {name: tokens[name] / statistics.median(times[name]) for name in times}
    print(f"machine: {machine()}")
    print(f"model: {model}; {args.prompts} prompts x {args.new_tokens} new tokens, greedy, {args.repeats} repeats")
    for name in ("raw", "ours"):
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:>4}: {throughput[name]:8.1f} generated tokens/s at best, {median[name]:8.1f} median "
              f"({tokens[name]} tokens; runs {runs} s)")
    print(f"ratio ours/raw: {throughput['ours'] / throughput['raw']:.3f} best, "
          f"{median['ours'] / median['raw']:.3f} median")
    print(f"ratio: {throughput['ours'] / throughput['raw']:.2f}")  # ours / raw vLLM at best, last for scripts


if __name__ == "__main__":
    main()
