"""The instruction suite's sampling protocol: our transformers backend vs lm-eval's `HFLM.generate_until`.

The MiniLLM protocol of `tasks/instruct.py` (temperature 1, top-p 1, top-k off, `no_repeat_ngram_size=6`, at most
256 new tokens, 5 seeds per prompt) on the tiny teacher, with its synthetic test prompts (answers of a few tokens) or
with `--dolly`, the Dolly evaluation prompts (cut to their first 256 tokens for both sides), which the tiny teacher
also answers in a token or two (the script prints the mean new tokens). Both sides get the same
requests, one per (prompt, seed), in one process, with the same batch size: ours draws each from its own seed and
encodes each prompt once for its five samples; HFLM runs every request as its own row of `model.generate` (it has
no per-request seed, so its samples differ from ours, and the mean lengths of the two sides are printed).

    python bench/bench_protocol.py --prompts 40 --batch-size 32
    python bench/bench_protocol.py --dolly --prompts 20 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_generate import tiny_teacher_and_prompts  # noqa: E402
from bench.bench_loglikelihood import paired  # noqa: E402
from bench.random_llama import add_model_arguments, machine, ours_and_peer  # noqa: E402


def dolly_prompts(count: int) -> list[str]:
    from tasks.instruct import released_prompt

    data = Path(os.environ.get("HARNESS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    lines = (data / "dolly" / "valid.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return [released_prompt(json.loads(line)) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=3, help="timed runs of each side, alternating")
    parser.add_argument("--dolly", action="store_true", help="Dolly's evaluation prompts instead of synthetic ones")
    add_model_arguments(parser)
    args = parser.parse_args()

    from lm_eval.api.instance import Instance

    from harness.backends import GenerationRequest
    from harness.runner import request_seed
    from tasks.instruct import MINILLM_SAMPLING, MINILLM_SEEDS

    folder, prompts = tiny_teacher_and_prompts(args.prompts)
    device, sync, ours, peer = ours_and_peer(folder, args)
    settings = MINILLM_SAMPLING
    if args.dolly:  # HFLM keeps a long prompt's end, the protocol its start: give both the start
        limit = settings.max_prompt_tokens
        prompts = [ours.tokenizer.decode(ours.tokenizer(p).input_ids[:limit]) for p in dolly_prompts(args.prompts)]
    requests = [GenerationRequest(prompt, settings, request_seed(seed, document))
                for document, prompt in enumerate(prompts) for seed in MINILLM_SEEDS]
    gen_kwargs = {"until": [ours.tokenizer.eos_token], "max_gen_toks": settings.max_new_tokens, "do_sample": True,
                  "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0,
                  "no_repeat_ngram_size": settings.no_repeat_ngram_size}
    instances = [Instance("generate_until", {}, (r.prompt, dict(gen_kwargs)), i) for i, r in enumerate(requests)]
    ours.generate(requests[: args.batch_size], progress=False)  # warm-up
    peer.generate_until(instances[: args.batch_size], disable_tqdm=True)
    ours_s, peer_s, ratio, ours_out, peer_out = paired(lambda: ours.generate(requests, progress=False),
                                                       lambda: peer.generate_until(instances, disable_tqdm=True),
                                                       sync, args.pairs)
    ours_tokens = sum(completion.num_tokens for completion in ours_out)
    peer_tokens = sum(len(ours.tokenizer(text, add_special_tokens=False).input_ids) for text in peer_out)
    print(f"machine: {machine()}; device {device}, dtype {args.dtype}")
    size = sum(p.numel() for p in ours.model.parameters()) / 1e6
    source = "Dolly evaluation prompts" if args.dolly else "synthetic test prompts"
    print(f"model: tiny teacher, {size:.1f}M parameters, vocab {len(ours.tokenizer)}; {source}")
    print(f"{args.prompts} prompts x {len(MINILLM_SEEDS)} seeds = {len(requests)} requests, temperature "
          f"{settings.temperature}, no_repeat_ngram_size {settings.no_repeat_ngram_size}, at most "
          f"{settings.max_new_tokens} new tokens, batch size {args.batch_size} on both sides")
    print(f"mean new tokens: ours {ours_tokens / len(requests):.1f} (eos counted), HFLM "
          f"{peer_tokens / len(requests):.1f} (eos not counted)")
    print(f"median of {args.pairs} alternating pairs: ours {ours_s:.2f} s ({len(requests) / ours_s:.1f} req/s)   "
          f"lm-eval HFLM {peer_s:.2f} s ({len(requests) / peer_s:.1f} req/s)   ratio ours/peer throughput: "
          f"{ratio:.2f}x")
    print(f"ratio: {ratio:.2f}")  # ours / peer throughput (same requests), last for scripts


if __name__ == "__main__":
    main()
