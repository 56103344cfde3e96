"""CROPI's per-prompt gradients: one backward pass per prompt over its whole response group (ours, the trainer's
`prompt_gradient`) vs plain per-response backward passes (one per sampled response, summed), and, for reference,
torch.func's vmap of grad over prompts.

Same tiny math policy, same 16 prompts x 8 stored responses of `--new-tokens` tokens with 0/1 rewards and perturbed
behaviour log-probs, same surrogate (`influence.off_policy_surrogate`, Dr. GRPO aggregation, KL 0.001), fp32, one
thread. Reported: prompts per second of each, and their largest gradient difference; the last line is
`ratio: ours / plain`.

    python bench/bench_cropi_gradients.py [--prompts 16] [--new-tokens 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_vllm_overhead import machine  # noqa: E402

GROUP, KL = 8, 0.001


def make_store(vocab: int, prompts: int, new_tokens: int) -> dict[str, torch.Tensor]:
    from harness.trainers.sampling import pack_rollout

    generator = torch.Generator().manual_seed(0)
    prompt_rows = [torch.randint(0, vocab, (24,), generator=generator).tolist() for _ in range(prompts)]
    rows = [prompt for prompt in prompt_rows for _ in range(GROUP)]
    lengths = torch.randint(new_tokens // 2, new_tokens + 1, (len(rows),), generator=generator).tolist()
    responses = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]
    rollout = pack_rollout(rows, responses, 0)
    shape = rollout.response_ids.shape
    return {**vars(rollout), "behaviour_logprobs": -5 + 0.3 * torch.randn(shape, generator=generator),
            "rewards": torch.randint(0, 2, (len(rows),), generator=generator).float()}


def surrogate(model, vocab, batch, rewards, max_length):
    from harness.trainers.grpo import group_advantages
    from harness.trainers.influence import off_policy_surrogate
    from harness.trainers.sampling import Rollout, response_logits, token_logprobs

    rollout = Rollout(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
    logprobs = token_logprobs(response_logits(model, rollout, vocab), batch["response_ids"])
    mask = batch["response_mask"].float()
    advantages = group_advantages(rewards, len(rewards), std=False)[:, None] * mask
    # dr_grpo divides by the rows of this call: scale to the group's G rows so every variant computes one objective
    return off_policy_surrogate(logprobs, batch["behaviour_logprobs"], advantages, mask, kl_coef=KL,
                                aggregation="dr_grpo", max_length=max_length) * len(rewards) / GROUP


def ours(model, vocab, store, prompts, max_length):
    from harness.trainers.influence import flat_gradient
    from harness.trainers.policy_gradient import trim

    parameters = list(model.parameters())
    out = []
    for p in range(prompts):
        rows = torch.arange(p * GROUP, (p + 1) * GROUP)
        out.append(flat_gradient(surrogate(model, vocab, trim(store, rows), store["rewards"][rows], max_length),
                                 parameters))
    return torch.stack(out)


def plain(model, vocab, store, prompts, max_length):
    """One backward per response: the group's advantages fixed first, each response's share of the objective."""
    from harness.trainers.grpo import group_advantages
    from harness.trainers.influence import off_policy_surrogate
    from harness.trainers.policy_gradient import trim
    from harness.trainers.sampling import Rollout, response_logits, token_logprobs

    out = []
    for p in range(prompts):
        rows = torch.arange(p * GROUP, (p + 1) * GROUP)
        advantages = group_advantages(store["rewards"][rows], GROUP, std=False)
        model.zero_grad()
        for row, advantage in zip(rows.tolist(), advantages, strict=True):
            one = trim(store, torch.tensor([row]))
            rollout = Rollout(one["prompt_ids"], one["prompt_mask"], one["response_ids"], one["response_mask"])
            logprobs = token_logprobs(response_logits(model, rollout, vocab), one["response_ids"])
            mask = one["response_mask"].float()
            loss = off_policy_surrogate(logprobs, one["behaviour_logprobs"], advantage * mask, mask, kl_coef=KL,
                                        aggregation="dr_grpo", max_length=max_length) / GROUP
            loss.backward()
        out.append(torch.cat([q.grad.reshape(-1) for q in model.parameters()]))
    return torch.stack(out)


def vmapped(model, vocab, store, prompts, max_length):
    """vmap over prompts of grad of the same objective (the prompts padded to one shape)."""
    from torch.func import functional_call, grad, vmap

    model.set_attn_implementation("eager")  # sdpa's mask check branches on data, which vmap cannot trace
    names = [name for name, _ in model.named_parameters()]
    params = {name: q.detach() for name, q in model.named_parameters()}
    stacked = {name: tensor.view(prompts, GROUP, *tensor.shape[1:]) for name, tensor in store.items()}

    def loss(params, group):
        class Bound(torch.nn.Module):
            def forward(self, **inputs):
                return functional_call(model, params, (), inputs)

        batch = {name: tensor for name, tensor in group.items() if name != "rewards"}
        return surrogate(Bound(), vocab, batch, group["rewards"], max_length)

    grads = vmap(grad(loss), in_dims=(None, 0))(params, stacked)
    model.set_attn_implementation("sdpa")
    return torch.cat([grads[name].reshape(prompts, -1) for name in names], dim=1)


def timed(function, repeats, *args):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from harness import tiny_math
    from harness.trainers.loading import load_model

    model = load_model(str(tiny_math.build().policy)).eval()
    vocab = model.config.vocab_size
    store = make_store(vocab, args.prompts, args.new_tokens)
    results = {}
    for name, function in (("ours", ours), ("plain", plain), ("vmap", vmapped)):
        seconds, gradients = timed(function, args.repeats, model, vocab, store, args.prompts, args.new_tokens)
        results[name] = (seconds, gradients)
        print(f"{name:>5}: {args.prompts / seconds:7.2f} prompts/s ({seconds:.2f} s)")
    for name in ("plain", "vmap"):
        print(f"largest |ours - {name}|: {(results['ours'][1] - results[name][1]).abs().max().item():.2e} "
              f"(gradient scale {results['ours'][1].abs().max().item():.2e})")
    print(machine())
    print(f"ratio: {results['plain'][0] / results['ours'][0]:.2f}")


if __name__ == "__main__":
    main()
