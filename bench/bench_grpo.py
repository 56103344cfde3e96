"""GRPO training throughput: our `grpo` trainer vs TRL's `GRPOTrainer`, both on the torch sampling path.

Same tiny policy (the tiny math policy after its SFT initialisation, or `--model`), same prompts (the tiny math
training problems in the math suite's prompt), group size 8, 8 prompts per step, up to `--new-tokens` new tokens
at temperature 1, one update per rollout batch (TRL: num_iterations 1, steps_per_generation 1), Dr. GRPO loss, no
KL, the same 0/1 reward (our math verifier, called by TRL as a reward function), fp32, one process. Reported:
prompts per second over the timed steps (the first step of each side is a warm-up and not timed), rollouts and
update together; the last line is `ratio: ours / TRL`.

    python bench/bench_grpo.py [--model PATH] [--steps 6] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_vllm_overhead import machine  # noqa: E402

PROMPTS_PER_STEP, GROUP = 8, 8


def ours(model: str, data: Path, steps: int, new_tokens: int, output: Path) -> float:
    from harness.trainers import train

    train("grpo", None, [f"model={model}", f"data_dir={data}", f"output_dir={output}", "progress=false",
                         "rollout_backend=torch", f"rollouts_per_round={PROMPTS_PER_STEP}", f"group_size={GROUP}",
                         f"batch_size={PROMPTS_PER_STEP * GROUP}", f"micro_batch_size={PROMPTS_PER_STEP * GROUP}",
                         f"rollout_batch_size={PROMPTS_PER_STEP}", f"max_new_tokens={new_tokens}",
                         "max_prompt_tokens=64", f"max_steps={steps}", "lr=1e-5", "advantage_std=false",
                         "loss_aggregation=dr_grpo", "max_eval_samples=1", "eval_problems=1", "max_grad_norm=1.0"])
    seconds = [json.loads(line)["seconds"] for line in (output / "log.jsonl").read_text().splitlines()]
    return (steps - 1) * PROMPTS_PER_STEP / sum(seconds[1:])


def trl_side(model: str, rows: list[dict], steps: int, new_tokens: int, output: Path) -> float:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.tasks.math import verify

    def reward(completions, answer, **_):
        return [s["correct"] for s in verify(list(answer), list(completions))]

    args = trl.GRPOConfig(output_dir=str(output), per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
                          num_generations=GROUP, gradient_accumulation_steps=1, steps_per_generation=1,
                          num_iterations=1, max_completion_length=new_tokens, temperature=1.0, top_p=1.0,
                          loss_type="dr_grpo", scale_rewards="none", beta=0.0, learning_rate=1e-5,
                          lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=steps, logging_steps=10_000,
                          save_strategy="no", report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
                          dataloader_num_workers=0, shuffle_dataset=False)
    timer = step_timer()
    data = datasets.Dataset.from_list([{"prompt": row["prompt"], "answer": row["answer"]} for row in rows])
    trainer = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), reward_funcs=reward, args=args,
                              processing_class=AutoTokenizer.from_pretrained(model), train_dataset=data,
                              callbacks=[timer])
    trainer.train()
    return (steps - 1) * PROMPTS_PER_STEP / (timer.marks[-1] - timer.marks[1])


def step_timer():
    """A TRL callback that marks the start of the first step and the end of every step: marks[1:] bound the
    timed steps (the first is a warm-up)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.marks:
                self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    return StepTimes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF checkpoint (default: the tiny math policy after a short SFT)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch

    from harness import tiny_math
    from harness.pipeline import RLVR_SFT, recipe_path
    from harness.trainers import train
    from harness.trainers.checkpoint import best_checkpoint
    from harness.trainers.data import read_jsonl

    torch.set_num_threads(1)
    paths = tiny_math.build()
    data = paths.data / "math_synth"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        if not args.model:
            train("sft", recipe_path("sft", None), [*RLVR_SFT, f"model={paths.policy}", f"data_dir={data}",
                                                    f"output_dir={root / 'sft'}", "progress=false"])
            args.model = str(best_checkpoint(root / "sft"))
        rows = read_jsonl(data / "train.jsonl")
        print(f"machine: {machine()}")
        print(f"policy {args.model}; {PROMPTS_PER_STEP} prompts x {GROUP} responses per step, up to "
              f"{args.new_tokens} new tokens, {args.steps} steps (first untimed), one torch thread")
        torch.manual_seed(0)
        peer = trl_side(args.model, rows, args.steps, args.new_tokens, root / "trl")
        torch.manual_seed(0)
        mine = ours(args.model, data, args.steps, args.new_tokens, root / "ours")
    print(f"ours {mine:.2f} prompts/s, TRL GRPOTrainer {peer:.2f} prompts/s")
    print(f"ratio: {mine / peer:.2f}")


if __name__ == "__main__":
    main()
