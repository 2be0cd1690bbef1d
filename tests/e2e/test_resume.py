"""Runs that survive faults: SIGKILL then resume gives the uninterrupted result.

SIGTERM (checkpoint at the next step, exit 0, resume with each eval once) is proved through the Slurm script,
which forwards it to the trainer (tests/test_scripts.py), and for one rank of two in tests/e2e/test_ddp.py:
a third run of the same path here cost two more training processes (17 s on 2 AVX-512 EPYC cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_sft.training.checkpoints import latest_complete_checkpoint
from tests.expensive_runs import start_once
from tests.helpers import REPO_ROOT

SMALL = ["--max_steps", "12", "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_strategy", "steps",
         "--save_steps", "4", "--eval_steps", "4", "--eval_num_examples", "8", "--eval_max_new_tokens", "24",
         "--eval_batch_size", "8"]  # evals only need to exist at their steps: the smallest that makes them


def start(out: Path, env, extra=()):
    cmd = [sys.executable, "hf_sft/train.py", "recipes/demo.yaml", "--output_dir", str(out), *SMALL, *extra]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out


def wait_for(predicate, proc, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def step_losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def eval_steps_on_disk(out: Path) -> list[int]:
    files = (out / "results" / "eval_logs").glob("summary_eval_step_*.json")
    return sorted(json.loads(p.read_text())["eval_step"] for p in files)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "HF_SFT_CACHE": str(tmp_path_factory.mktemp("assets")), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    start_once(tmp_path_factory, "resume_uninterrupted")
    out = tmp_path_factory.mktemp("straight") / "run"
    finish(start(out, env))
    return out


@pytest.mark.slow
def test_sigkill_then_resume_auto_matches_an_uninterrupted_run(tmp_path, env, uninterrupted):
    out = tmp_path / "run"
    proc = start(out, env)
    wait_for(lambda: latest_complete_checkpoint(out) == str(out / "checkpoint-8"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in (out / "results" / "eval_logs").iterdir()}
    finish(start(out, env, ["--resume_from_checkpoint", "auto"]))

    straight, resumed = step_losses(uninterrupted), step_losses(out)
    assert resumed[12] == pytest.approx(straight[12], abs=1e-6)
    from safetensors.torch import load_file

    wa, wb = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # each eval step exactly once, and nothing written before the kill was lost or changed
    assert eval_steps_on_disk(out) == [0, 4, 8, 12]
    after = {p.name: p.read_bytes() for p in (out / "results" / "eval_logs").iterdir()}
    assert all(after.get(name) == data for name, data in before.items())
