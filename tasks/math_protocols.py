"""The math suite's evaluation protocols by name (`--protocol NAME`): how the question becomes a prompt, how it is
decoded and how the response is judged, each preset read from the code its numbers come from.

- `default`: ours (eval-protocols section 4). The problem, a newline, "Please reason step by step, and put your
  final answer within \\boxed{}." as plain text (or one user turn with `--chat-template`); greedy, 2,048 new
  tokens, one sample, except AIME/AMC: 32 samples at temperature 0.6, top-p 0.95; math-verify, then the last number.
- `trapo`: TRAPO's eval_scripts/generate_vllm.py (Su-my/TRAPO at 982cb8f, `template='own'`, its defaults):
  the checkpoint's own chat template on the bare question (the data's system turn removed), temperature 0.6, top-p
  1.0, 8,192 new tokens; one sample on MATH-500/Minerva/OlympiadBench, 32 on AIME/AMC (its files hold 32 copies).
  Correct when math-verify on the whole response (gold first) says so, else when OAT's last-box grader does; when
  the template opens `<think>`, "<think>\\n" is put before the response and only the text after `</think>` counts
  (none: wrong).
- `qwen25-math-cot`: the Qwen2.5-Math evaluation (QwenLM/Qwen2.5-Math at a45202b, `--prompt_type
  qwen25-math-cot`), as CROPI evaluates: the instruction in the system turn, the question alone in the user turn,
  as Qwen's raw `<|im_start|>` string (any model) or with `--chat-template` through the checkpoint's template;
  greedy, one sample, 2,048 new tokens, stop at `</s>`, `<|im_end|>`, `<|endoftext|>`; Qwen's answer phrases
  ("The answer is", "final answer is") before the last number and its number tolerance (relative 1e-4, percent
  forms).
- `simplerl`: TRAPO's `template='simplerl'`, how it evaluates SimpleRL-style baselines: system "You are a helpful
  assistant.", the question then "\\nPlease reason step by step, and put your final answer within\\boxed{{}}."
  (its literal text, doubled braces and all) as a raw string; TRAPO's decoding and graders.

Differences from the references: TRAPO's script gives all 32 copies of a prompt one vLLM seed, so its avg@32 may
average fewer distinct samples; every sample here has its own seed (`harness.runner.request_seed`). OAT's grader
normalises answers its own way; `math_equal` stands in for it. The `<think>` rule applies to any response that
starts with `<think>` (TRAPO looks only at whether the prompt ended with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.backends.base import SamplingSettings
from harness.metrics.math import DEFAULT_VERIFIER, THINK_START, VerifierOptions
from harness.registry import register_protocol

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Protocol:
    """One named way to run the math suite. `single` decodes the sets drawn once, `repeated` the AIME/AMC sets
    with `repeats` samples each."""

    name: str
    source: str
    prompt: Callable[[str], str]  # question -> the plain-text prompt
    messages: Callable[[str], Messages] | None  # question -> chat turns, when a chat template renders it
    chat_template: bool | None  # True: always the checkpoint's template; None: --chat-template decides
    single: SamplingSettings
    repeated: SamplingSettings
    repeats: int
    verifier: VerifierOptions = DEFAULT_VERIFIER
    think_prefix: bool = False  # a template that opens <think> has written the response's first tag


def qwen_chat_string(system: str, user: str) -> str:
    """The Qwen ChatML turns as one raw string, ending where the assistant's reply begins."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def default_prompt(question: str) -> str:
    return f"{question}\n{INSTRUCTION}"


SIMPLERL_SYSTEM = "You are a helpful assistant."
SIMPLERL_SUFFIX = "\nPlease reason step by step, and put your final answer within\\boxed{{}}."  # sic
QWEN_STOP = ("</s>", "<|im_end|>", "<|endoftext|>")  # math_eval.py's stop_words

TRAPO_SAMPLING = SamplingSettings(max_new_tokens=8192, temperature=0.6, top_p=1.0)
TRAPO_VERIFIER = VerifierOptions(after_think=True, last_box_grader=True)

DEFAULT = Protocol(
    name="default", source="ours: eval-protocols section 4 (the Qwen2.5-Math zero-shot prompt, math-verify)",
    prompt=default_prompt, messages=None, chat_template=None,
    single=SamplingSettings(max_new_tokens=2048, temperature=0.0),
    repeated=SamplingSettings(max_new_tokens=2048, temperature=0.6, top_p=0.95), repeats=32)

PROTOCOLS = {protocol.name: protocol for protocol in (
    DEFAULT,
    Protocol(name="trapo", source="Su-my/TRAPO eval_scripts/generate_vllm.py @982cb8f (template='own')",
             prompt=lambda question: question, messages=lambda question: [{"role": "user", "content": question}],
             chat_template=True, single=TRAPO_SAMPLING, repeated=TRAPO_SAMPLING, repeats=32,
             verifier=TRAPO_VERIFIER, think_prefix=True),
    Protocol(name="qwen25-math-cot",
             source="QwenLM/Qwen2.5-Math evaluation/ @a45202b (prompt_type qwen25-math-cot), as CROPI uses it",
             prompt=lambda question: qwen_chat_string(INSTRUCTION, question),
             messages=lambda question: [{"role": "system", "content": INSTRUCTION},
                                        {"role": "user", "content": question}],
             chat_template=None, single=SamplingSettings(max_new_tokens=2048, temperature=0.0, stop=QWEN_STOP),
             repeated=SamplingSettings(max_new_tokens=2048, temperature=0.0, stop=QWEN_STOP), repeats=1,
             verifier=VerifierOptions(answer_phrases=True, qwen_tolerance=True)),
    Protocol(name="simplerl", source="Su-my/TRAPO eval_scripts/generate_vllm.py @982cb8f (template='simplerl')",
             prompt=lambda question: qwen_chat_string(SIMPLERL_SYSTEM, question + SIMPLERL_SUFFIX),
             messages=lambda question: [{"role": "system", "content": SIMPLERL_SYSTEM},
                                        {"role": "user", "content": question + SIMPLERL_SUFFIX}],
             chat_template=None, single=TRAPO_SAMPLING, repeated=TRAPO_SAMPLING, repeats=32,
             verifier=TRAPO_VERIFIER, think_prefix=True),
)}

for _protocol in PROTOCOLS.values():
    register_protocol(_protocol.name, _protocol.source)


def think_prefix(rendered_prompt: str) -> str:
    """What the template already wrote of the response: "<think>\\n" when the prompt ends by opening it (TRAPO
    then puts it before the generated text)."""
    return f"{THINK_START}\n" if rendered_prompt.endswith(f"{THINK_START}\n") else ""
