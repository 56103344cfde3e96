"""Checkpoints are read before they load: a broken or unsafe one is one line, and planted code never runs."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.models import check_local
from tests.conftest import PLANTED, broken_checkpoint

CASES = [
    ("config-only", "holds no weights"),
    ("truncated", "is truncated"),
    ("random", "not a safetensors file"),
    ("pickled", "safe loading refuses"),
    ("custom-code", "--trust-remote-code"),
    ("bad-config", "not valid JSON"),
]


@pytest.mark.parametrize("kind, message", CASES)
def test_a_broken_checkpoint_is_refused_before_loading(kind, message, random_model, tmp_path):
    folder = broken_checkpoint(random_model, tmp_path / kind, kind)
    with pytest.raises(HarnessError, match=message):
        check_local(str(folder))
    assert not (folder / PLANTED).exists()


@pytest.mark.parametrize("kind, message", CASES)
def test_eval_of_a_broken_checkpoint_is_one_line(kind, message, random_model, tmp_path, capsys):
    folder = broken_checkpoint(random_model, tmp_path / kind, kind)
    assert main(["eval", "--model", str(folder), "--tasks", "synth", "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (folder / PLANTED).exists() and not (tmp_path / "runs").exists()


def test_an_unknown_architecture_is_refused_before_any_weight_loads(random_model, tmp_path, capsys):
    """Looking the architecture up imports transformers, so `harness eval` does it when the model loads (a run
    served from its cache never does): still one line, and no results."""
    folder = broken_checkpoint(random_model, tmp_path / "unknown", "unknown-architecture")
    with pytest.raises(HarnessError, match="names no architecture transformers knows"):
        check_local(str(folder))
    runs = tmp_path / "runs"
    assert main(["eval", "--model", str(folder), "--tasks", "synth", "--limit", "2", "--output-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "names no architecture" in err and "\n" not in err
    assert not list(runs.glob("*/*/results.json"))


def test_custom_code_loads_when_trusted_and_a_good_checkpoint_passes(random_model, tmp_path):
    assert check_local(str(random_model)) == random_model
    folder = broken_checkpoint(random_model, tmp_path / "custom", "custom-code")
    assert check_local(str(folder), trust_remote_code=True) == folder
