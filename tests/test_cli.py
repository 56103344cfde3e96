"""The command line as a user meets it: one-line errors with exit status 2, and a run that survives `kill -9`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main


def harness(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)


@pytest.fixture
def data_dir(tmp_path, shared_data_rows):
    folder = tmp_path / "data" / "dolly"
    folder.mkdir(parents=True)
    (folder / "valid.jsonl").write_text("".join(json.dumps(row) + "\n" for row in shared_data_rows))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def shared_data_rows():
    return [{"instruction": f"Add {i} and {i + 1}", "input": "", "output": f"The answer is {2 * i + 1}.",
             "prompt": f"### Instruction:<n>The number {i} plus {i + 1}<n><n>### Response:<n>"} for i in range(12)]


@pytest.mark.parametrize("args, message", [
    (["eval", "--model", "./no-such-ckpt", "--tasks", "dolly"], "no checkpoint at ./no-such-ckpt"),
    (["eval", "--model", "MODEL", "--tasks", "nope"], "unknown task or suite 'nope'"),
    (["eval", "--model", "MODEL", "--tasks", "dolly", "--data-dir", "/nonexistent"], "dolly/valid.jsonl"),
    (["eval", "--model", "MODEL", "--tasks", "dolly", "--gen-kwargs", "tempreature=1"], "unknown --gen-kwargs key"),
    (["eval", "--model", "MODEL", "--config", "/nonexistent.yaml"], "no config file at /nonexistent.yaml"),
    (["eval", "--model", "MODEL", "--data-parallel", "0"], "--data-parallel must be a whole number >= 1, not 0"),
    (["eval", "--model", "MODEL", "--data-parallel", "999", "--device", "cpu"], "pass --data-parallel"),
    (["report", "--output-dir", "/nonexistent"], "no results under /nonexistent"),
    (["train", "sft", "model=./no-such-ckpt"], "no checkpoint at ./no-such-ckpt"),
    (["train", "kd", "model=MODEL", "teacher=/no/teacher"], "no checkpoint at /no/teacher"),
    (["train", "minillm", "model=MODEL", "teacher=MODEL", "rollout_backend=ray"], "rollout_backend='ray'"),
    (["train-and-eval", "ppo"], "unknown training method 'ppo': choose one of cropi, extralm"),
    (["train", "ppo", "--config", "configs/sft.yaml"], "unknown training method 'ppo'"),
])
def test_user_errors_are_one_line_and_exit_2(args, message, capsys, random_model):
    assert main([arg.replace("MODEL", str(random_model)) for arg in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_malformed_gen_kwargs_is_rejected_by_the_parser():
    result = harness("eval", "--gen-kwargs", "oops")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "key=value" in result.stderr


def test_show_config_resolves_recipe_and_overrides_wherever_they_stand(capsys):
    import yaml

    recipe = str(Path(__file__).resolve().parents[1] / "configs" / "kd.yaml")
    assert main(["train", "kd", "lr=3e-4", "--config", recipe, "kd_ratio=0.25", "--show-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["lr"], shown["kd_ratio"], shown["output_dir"]) == (3e-4, 0.25, "runs/tiny/kd")
    assert {"model", "teacher", "max_grad_norm", "precision"} <= shown.keys()


def test_stray_arguments_are_still_rejected():
    for args in (["train", "kd", "--bogus"], ["eval", "--model", "m", "lr=3"]):
        result = harness(*args)
        assert result.returncode == 2 and "unrecognized arguments" in result.stderr


def test_tasks_lists_every_task_with_its_source(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("dolly", "self_inst", "vicuna", "sni", "unni", "synth"):
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert "hub: MiniLLM/dolly" in out and "suite instruct" in out


def cached_rows(root) -> int:
    database = root / ".cache" / "generations.sqlite"
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(database) as connection:
            return connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def kill_after_cached(args: list[str], root: Path, rows: int) -> int:
    """Start `harness ARGS --output-dir ROOT`, `kill -9` it once `rows` answers are cached; the count cached then."""
    process = subprocess.Popen([sys.executable, "-m", "harness", *args, "--output-dir", str(root)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while cached_rows(root) < rows and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return cached_rows(root)


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_without_redoing_work(random_model, data_dir, tmp_path):
    args = ["eval", "--model", str(random_model), "--tasks", "dolly", "--data-dir", str(data_dir), "--batch-size",
            "2", "--gen-kwargs", "max_new_tokens=24"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    done_before = kill_after_cached(args, killed, 16)
    assert 0 < done_before < 60, "the kill must land in the middle of the run"
    assert not (killed / "rand" / "dolly" / "results.json").exists()

    resumed = harness(*args, "--output-dir", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {done_before} of 60 generations found in the cache" in resumed.stderr
    uninterrupted = harness(*args, "--output-dir", str(clean))
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    def outcome(root):
        folder = next(root.glob("*/dolly"))
        samples = [json.loads(line)["predictions"] for line in (folder / "samples.jsonl").read_text().splitlines()]
        return json.loads((folder / "results.json").read_text())["metrics"], samples

    assert outcome(killed) == outcome(clean)


@pytest.mark.parametrize("args, message", [
    (["eval", "--samples", "many"], "argument --samples: invalid int value: 'many'"),
    (["eval", "--seeds", ","], "argument --seeds: expected at least one integer"),
    (["eval", "--backend", "tgi"], "argument --backend: invalid choice"),
    (["evaluate"], "argument COMMAND: invalid choice"),
])
def test_usage_errors_are_one_line_with_the_help_hint(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "usage:" not in err
    assert err.startswith("error: ") and message in err and "--help` for the options" in err


@pytest.mark.parametrize("where", ["file", "unwritable"])
def test_report_and_eval_refuse_an_output_dir_they_cannot_write(where, tmp_path, capsys, random_model):
    if where == "file":
        output = tmp_path / "runs"
        output.write_text("")
    else:
        output = Path("/proc")  # not writable, even for root
    for args in (["report"], ["eval", "--model", str(random_model), "--tasks", "synth"]):
        assert main([*args, "--output-dir", str(output)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and ("is not a folder" if where == "file" else "is not writable") in err


def test_a_data_file_that_is_not_utf8_names_file_and_line(data_dir, random_model, tmp_path, capsys):
    bad = data_dir / "dolly" / "valid.jsonl"
    bad.write_bytes(bad.read_bytes() + '{"instruction": "caf\u00e9"}\n'.encode("latin-1"))
    assert main(["eval", "--model", str(random_model), "--tasks", "dolly", "--data-dir", str(data_dir),
                 "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}:13 is not UTF-8" in err and "\n" not in err


def test_train_and_eval_hands_the_whole_evaluation_config_to_checkpoint_evaluation():
    from harness.cli import build_parser, eval_config_from_args

    args = build_parser().parse_args([
        "train-and-eval", "trapo", "lr=1e-5", "--config", "configs/trapo.yaml", "--samples", "4",
        "--gen-kwargs", "temperature=0.6,max_new_tokens=64", "--chat-template", "--tensor-parallel-size", "2",
        "--tasks", "math", "--limit", "5"])
    config = eval_config_from_args(args, recipe=True)
    assert (config.samples, config.chat_template, config.tasks, config.limit) == (4, True, "math", 5)
    assert config.gen_kwargs == {"temperature": 0.6, "max_new_tokens": 64}
    assert config.backend_options == {"tensor_parallel_size": 2}
    assert config.model is None  # each checkpoint fills it in


@pytest.mark.parametrize("command", [[], ["eval"], ["tasks"], ["tiny"], ["report"], ["compare"], ["train"],
                                     ["train-and-eval"]])
def test_help_prints_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: harness" in capsys.readouterr().out
