"""MiniLLM training throughput: our `minillm` trainer vs TRL's experimental `MiniLLMTrainer` (torch sampling).

Same tiny student and teacher (the project's tiny pair, or `--model`/`--teacher`), same prompts (the tiny
instruction training prompts), 16 prompts per step with one response each, up to `--new-tokens` new tokens at
temperature 1, one update per rollout batch (ours: ppo_epochs 1; TRL: num_iterations 1, steps_per_generation 1),
PPO clipping 0.2, the single-step term and length-normalised reverse-KL returns with gamma 1, fp32, one process.

Settings that cannot be matched, so both sides leave them out: teacher-mixed sampling (`mix_alpha`; TRL samples
from the student only) and the pre-training LM loss (`pretrain_coef`; TRL has none). TRL also adds GRPO's group
advantage of its reward function; with one response per prompt and `scale_rewards="none"` that advantage is 0.

Reported: prompts per second over the timed steps (the first step of each side is a warm-up and not timed),
rollouts and update together; the last line is `ratio: ours / TRL`. TRL removed the trainer in 1.15, so this
needs trl < 1.15 (the dev install pins it).

    python bench/bench_minillm.py [--steps 6] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_grpo import step_timer  # noqa: E402
from bench.bench_vllm_overhead import machine  # noqa: E402

PROMPTS_PER_STEP = 16


def ours(model: str, teacher: str, data: Path, steps: int, new_tokens: int, output: Path) -> float:
    from harness.trainers import train

    train("minillm", None, [f"model={model}", f"teacher={teacher}", f"data_dir={data}", f"output_dir={output}",
                            "progress=false", "rollout_backend=torch", f"rollouts_per_round={PROMPTS_PER_STEP}",
                            f"batch_size={PROMPTS_PER_STEP}", f"micro_batch_size={PROMPTS_PER_STEP}",
                            f"rollout_batch_size={PROMPTS_PER_STEP}", "ppo_epochs=1", f"max_new_tokens={new_tokens}",
                            "mix_alpha=0.0", "pretrain_coef=0.0", "clip_eps=0.2", "gamma=1.0", "lr=1e-5",
                            "schedule=constant", "warmup_steps=0", f"max_steps={steps}", "eval_every=0",
                            "save_every=0", "max_eval_samples=1", "eval_rollouts=1", "max_grad_norm=1.0"])
    seconds = [json.loads(line)["seconds"] for line in (output / "log.jsonl").read_text().splitlines()]
    return (steps - 1) * PROMPTS_PER_STEP / sum(seconds[1:])


def trl_side(model: str, teacher: str, prompts: list[str], steps: int, new_tokens: int, output: Path) -> float:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from trl.experimental.minillm import MiniLLMConfig, MiniLLMTrainer
    except ImportError:
        sys.exit("bench_minillm: this TRL has no trl.experimental.minillm (removed in 1.15); "
                 "install the dev extra, which pins trl<1.15")

    args = MiniLLMConfig(output_dir=str(output), per_device_train_batch_size=PROMPTS_PER_STEP, num_generations=1,
                         gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
                         max_completion_length=new_tokens, temperature=1.0, top_p=1.0, epsilon=0.2, beta=0.0,
                         rkl_advantage=True, single_step_decomposition=True, gamma=1.0, length_normalization=True,
                         learning_rate=1e-5, lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=steps,
                         logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                         disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False)
    timer = step_timer()
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    trainer = MiniLLMTrainer(model=AutoModelForCausalLM.from_pretrained(model),
                             teacher_model=AutoModelForCausalLM.from_pretrained(teacher), args=args,
                             processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
                             callbacks=[timer])
    trainer.train()
    return (steps - 1) * PROMPTS_PER_STEP / (timer.marks[-1] - timer.marks[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="student checkpoint (default: the tiny student)")
    parser.add_argument("--teacher", help="teacher checkpoint (default: the tiny teacher)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch

    from harness import tiny
    from harness.trainers.data import read_jsonl

    torch.set_num_threads(1)
    paths = tiny.build()
    model, teacher = args.model or str(paths.student), args.teacher or str(paths.teacher)
    data = paths.data / "synth"
    prompts = [row["prompt"] for row in read_jsonl(data / "train.jsonl")]
    print(f"machine: {machine()}")
    print(f"student {model}, teacher {teacher}; {PROMPTS_PER_STEP} prompts x 1 response per step, up to "
          f"{args.new_tokens} new tokens, {args.steps} steps (first untimed), one torch thread")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        torch.manual_seed(0)
        peer = trl_side(model, teacher, prompts, args.steps, args.new_tokens, root / "trl")
        torch.manual_seed(0)
        mine = ours(model, teacher, data, args.steps, args.new_tokens, root / "ours")
    print(f"ours {mine:.2f} prompts/s, TRL MiniLLMTrainer {peer:.2f} prompts/s")
    print(f"ratio: {mine / peer:.2f}")


if __name__ == "__main__":
    main()
