"""Runs that survive faults: SIGKILL then resume gives the uninterrupted result; SIGTERM checkpoints and exits."""

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


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, env):
    out = tmp_path / "run"
    proc = start(out, env, ["--save_strategy", "no"])
    wait_for(lambda: 4 in eval_steps_on_disk(out) if (out / "results").exists() else False, proc)
    proc.send_signal(signal.SIGTERM)
    log = finish(proc, timeout=300)
    assert "Resume with the same command plus --resume_from_checkpoint auto" in log
    checkpoint = latest_complete_checkpoint(out)
    assert checkpoint is not None and int(checkpoint.rsplit("-", 1)[1]) < 12
    assert not (out / "model.safetensors").exists()  # the final model is only saved by a finished run
    finish(start(out, env, ["--save_strategy", "no", "--resume_from_checkpoint", "auto"]))
    assert max(step_losses(out)) == 12
    assert eval_steps_on_disk(out) == [0, 4, 8, 12]
