"""Every task, as a new user runs them, on the real data folder: `--tasks all --limit 1` goes end to end."""

from __future__ import annotations

import json

import pytest

from harness.registry import expand
from harness.runner import EvalConfig, evaluate


@pytest.mark.slow  # every task once on the random model: about three minutes on two busy CPU cores
def test_every_task_runs_on_the_shared_folder(shared_data, random_model, tmp_path):
    written = evaluate(EvalConfig(model=str(random_model), tasks="all", data_dir=str(shared_data), limit=1,
                                  output_dir=str(tmp_path), gen_kwargs={"max_new_tokens": 4}, progress=False,
                                  device="cpu"))
    tasks = [json.loads(path.read_text())["task"] for path in written]
    assert tasks == expand("all") and {"icl_sst2", "sni_icl", "icl_synth_parity", "calibration_boolq"} <= set(tasks)
    for path in written:
        record = json.loads(path.read_text())
        assert record["main_metric"] in record["metrics"], record["task"]
