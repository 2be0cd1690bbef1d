"""The demo as a user runs it: `accelerate launch hf_sft/train.py recipes/demo.yaml`, then the eval command.

Slow (a few minutes on 2 CPU cores) and run by CI: it is the proof that the whole path learns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.expensive_runs import start_once
from tests.helpers import REPO_ROOT, tail

# One worker runs the module: its three tests share one demo run.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo_e2e")]


def run(cmd, env, timeout):
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{tail(proc.stdout, 3000)}\n{tail(proc.stderr, 6000)}"
    return proc


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    start_once(tmp_path_factory, "demo")
    out = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "HF_SFT_CACHE": str(tmp_path_factory.mktemp("assets")), "PYTHONUNBUFFERED": "1"}
    accelerate = str(Path(sys.executable).parent / "accelerate")
    run([accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "hf_sft/train.py", "recipes/demo.yaml", "--output_dir", str(out)], env, 900)
    return out, env


def summaries(run_dir: Path) -> list[dict]:
    files = (run_dir / "results" / "eval_logs").glob("summary_eval_step_*.json")
    return sorted((json.loads(p.read_text()) for p in files), key=lambda s: s["eval_step"])


def test_demo_trains_saves_and_loss_falls_fivefold(demo_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = demo_run
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[0] / losses[-1] >= 5, losses
    assert all("entropy" in h and "token_accuracy" in h for h in history if "loss" in h)


def test_demo_accuracy_goes_from_baseline_to_85_percent(demo_run):
    out, _ = demo_run
    evals = summaries(out)
    assert evals[0]["eval_step"] == 0 and evals[0]["metrics"]["accuracy"] <= 0.05
    last = evals[-1]["metrics"]
    # 0.95 on the machine of stop 9, 0.89 on this session's AMD EPYC (same seed: other float kernels).
    assert last["accuracy"] >= 0.85, [(s["eval_step"], s["metrics"]["accuracy"]) for s in evals]
    assert last["format_accuracy"] >= 0.99
    logs = list((out / "results" / "eval_logs").glob("eval_step_*.jsonl"))
    assert len(logs) == len(evals)
    record = json.loads(logs[0].read_text().splitlines()[0])
    assert {"prompt", "problem", "response", "ground_truth", "rewards", "metrics", "category",
            "finish_reason", "grader_disagreement", "subject", "level"} <= set(record)
    # The issue-12 fields: intervals, the other grader's verdict, breakdowns by subject and level.
    final = evals[-1]
    low, high = final["confidence_intervals"]["accuracy"]
    assert low <= last["accuracy"] <= high and high - low < 0.15  # 200 problems
    assert final["grading"]["reward_fn"] == "r1_zero" and final["grader_disagreements"]["compared"] == 200
    assert set(final["by_subject"]) == {"Carry", "No carry"} and set(final["by_level"]) == {"Level 1", "Level 2"}
    assert sum(g["count"] for g in final["by_subject"].values()) == 200
    assert (out / "report" / "by_subject.png").exists()


def test_eval_command_reproduces_the_in_training_figure(demo_run, tmp_path):
    out, env = demo_run
    last = summaries(out)[-1]
    run([sys.executable, "-m", "hf_sft.evaluate", "recipes/demo.yaml", "--model_name_or_path", str(out),
         "--eval_step", str(last["eval_step"]), "--output_dir", str(tmp_path)], env, 600)
    again = summaries(tmp_path)[-1]
    assert again["eval_step"] == last["eval_step"]
    assert again["metrics"] == last["metrics"]
    assert again["categorization"] == last["categorization"]
