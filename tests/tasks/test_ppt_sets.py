"""PPT's downstream sets: the template and verbalizer of each on its real first test row, the label order, the
unified multiple-choice variant, and BoolQ's pool kept apart from its test rows."""

from __future__ import annotations

import pytest

from harness.data import load_docs, load_pool
from harness.registry import get_task
from harness.runner import EvalConfig, plan
from tests.conftest import SHARED_DATA

EXPECTED = {  # first test row: (prompt, options, gold option)
    "sst2": ("one long string of cliches . It was", [" terrible", " great"], " terrible"),
    "sst5": ("no movement , no yuks , not much of anything . It was",
             [" terrible", " bad", " maybe", " good", " great"], " bad"),
    "rte": ("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to "
            "the Christopher Reeve Foundation. Question: Christopher Reeve had an accident? Answer:",
            [" yes", " no"], " no"),
    "cb": ("Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own portion of "
           "titanic anatomy to shaft? Did he think he was helping? Question: Valence was helping? Answer:",
           [" yes", " maybe", " no"], " no"),
}

needs_data = pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="shared/data is not here")


@needs_data
@pytest.mark.parametrize("short", sorted(EXPECTED))
def test_template_and_verbalizer_on_the_first_test_row(short):
    task = get_task(f"ppt_{short}")
    doc = load_docs(task, SHARED_DATA, limit=1)[0]
    prompt, options, gold = EXPECTED[short]
    assert task.prompt(doc) == prompt
    assert task.choices(doc) == options
    assert task.references(doc) == [gold.strip()]
    assert task.fewshot.k == 0  # the soft prompt replaces demonstrations


@needs_data
def test_boolq_pool_and_test_rows_are_disjoint_and_unified_variant_letters():
    task = get_task("ppt_boolq")
    pool, test = load_pool(task, SHARED_DATA), load_docs(task, SHARED_DATA)
    assert (len(pool), len(test)) == (1000, 2270)
    assert not {row["idx"] for row in pool} & {row["idx"] for row in test}
    assert task.prompt(test[0]).endswith("? Answer:") and task.choices(test[0]) == [" yes", " no"]
    unified = get_task("ppt_cb_mc")
    doc = load_docs(unified, SHARED_DATA, limit=1)[0]
    assert unified.prompt(doc).endswith("? Answer:\nA. yes\nB. maybe\nC. no\nAnswer:")
    assert unified.choices(doc) == [" A", " B", " C"] and unified.references(doc) == ["C"]


@needs_data
def test_the_suite_plans_zero_shot_without_loading_pools():
    planned = plan(EvalConfig(tasks="ppt", data_dir=str(SHARED_DATA), limit=2))
    assert [item.task.name for item in planned] == ["ppt_sst2", "ppt_sst5", "ppt_rte", "ppt_cb", "ppt_boolq"]
    assert all(not item.demonstrations and len(item.docs) == 2 for item in planned)
