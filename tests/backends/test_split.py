"""The lm-eval context/continuation split shared by both backends."""

from __future__ import annotations

from transformers import AutoTokenizer

from harness.backends.base import split_requests


def test_split_follows_lm_eval_and_survives_boundary_merges(tiny, random_model):
    plain = AutoTokenizer.from_pretrained(random_model)
    [(context, continuation)] = split_requests(plain, [("The number 3 plus ", "4")])
    whole = plain("The number 3 plus 4", add_special_tokens=False)["input_ids"]
    assert context + continuation == whole and plain.decode(continuation) == " 4"  # the space moved over
    assert split_requests(plain, [("", "pear")])[0][0] == [plain.eos_token_id]

    # The tiny tokenizer learned "### Response:" pieces as single tokens; whatever the pieces, the continuation
    # must never come back empty or cut (lm-eval's own split returns [] when a token spans the boundary).
    merged = AutoTokenizer.from_pretrained(tiny.teacher)
    prompt = "### Instruction:\nAdd 2 and 3\n\n### Response:\n"
    [(context, continuation)] = split_requests(merged, [(prompt, "5")])
    assert merged.decode(continuation) == "\n5"
    assert merged.decode(context) == prompt.rstrip()
    # A context that stops inside a learned token: lm-eval's split would score an empty continuation here.
    cut = prompt.rstrip()[:-1]
    whole = merged(cut + ":", add_special_tokens=False)["input_ids"]
    assert whole[: len(merged(cut, add_special_tokens=False)["input_ids"])] != merged(cut)["input_ids"]
    [(context, continuation)] = split_requests(merged, [(cut, ":")])
    assert merged.decode(continuation) == ":" and merged.decode(context) == cut


def test_reference_loss_split_keeps_the_prompt_whole(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.teacher)
    prompt = "### Instruction:\nAdd 2 and 3\n\n### Response:\n"
    [(context, continuation)] = split_requests(tokenizer, [(prompt, "5")], move_whitespace=False)
    assert tokenizer.decode(context) == prompt and tokenizer.decode(continuation) == "5"
