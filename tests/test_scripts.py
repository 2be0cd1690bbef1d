"""The shell scripts users submit: they parse, pass shellcheck, and the Slurm script survives SIGTERM.

The SIGTERM test runs `scripts/run_sft_slurm.sh` for real (accelerate launch, the demo recipe on CPU) and
sends SIGTERM to the batch shell alone, which is what `#SBATCH --signal=B:TERM@300` makes Slurm do before
the time limit: the script must forward it, the trainer must checkpoint, and the same command must resume
with every scheduled eval done once. It is also the suite's SIGTERM-and-resume proof for a single process
(tests/e2e/test_resume.py has the SIGKILL one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, summary_steps, tail

SCRIPTS = sorted(str(p) for d in ("scripts", "benchmarks") for p in Path(REPO_ROOT, d).glob("*.sh")) + \
    [os.path.join(REPO_ROOT, ".ci", "run")]
SHELLCHECK = shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (as root: apt-get install -y shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_script_passes_shellcheck(script):
    proc = subprocess.run([SHELLCHECK, "--shell=bash", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_gpu_check_runs_its_code_paths_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --cpu-smoke: every check of the GPU run, on a tiny model, passes and fills the table."""
    table = tmp_path / "table.md"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(table)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable})
    assert proc.returncode == 0, tail(proc.stdout, 4000) + tail(proc.stderr, 4000)
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.read_text().splitlines()[2:]}
    for check in ("gemm", "train:4x8", "train:32x1", "train:off", "train:losses", "syncs", "attention", "head",
                  "snapshot", "generate"):
        assert rows.get(check) == "ok", table.read_text()


CPU_ACCELERATE_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: "NO"
num_processes: 1
num_machines: 1
mixed_precision: "no"
use_cpu: true
dynamo_config:
  dynamo_backend: "NO"
"""


@pytest.mark.slow
def test_slurm_script_forwards_sigterm_checkpoints_and_resumes(tmp_path):
    config = tmp_path / "accelerate_cpu.yaml"
    config.write_text(CPU_ACCELERATE_CONFIG)
    out = tmp_path / "run"
    env = {**os.environ, "HF_SFT_ACCELERATE_CONFIG": str(config), "HF_SFT_CACHE": str(tmp_path / "assets"),
           "PYTHONUNBUFFERED": "1", "SLURM_JOB_ID": "4242", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("SLURM_SUBMIT_DIR", None)
    # Steps of 4: the test is about the signal, not the learning. Evals of 8 problems at 0 (before the signal)
    # and 60 (after the resume): the first is not done again by the resumed run, and the last is not lost.
    cmd = ["bash", "scripts/run_sft_slurm.sh", "recipes/demo.yaml", "--output_dir", str(out), "--max_steps", "60",
           "--logging_steps", "1", "--save_strategy", "no", "--per_device_train_batch_size", "4",
           "--eval_steps", "60", "--eval_num_examples", "8", "--eval_max_new_tokens", "24", "--eval_batch_size", "8"]
    log = tmp_path / "slurm.out"
    with open(log, "w") as sink:
        job = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while "'loss'" not in log.read_text() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
        assert job.poll() is None, log.read_text()[-4000:]
        job.send_signal(signal.SIGTERM)  # the batch shell only, as Slurm's B:TERM
        assert job.wait(timeout=300) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "SIGTERM: asking the trainer to save a checkpoint and stop" in text
    assert "Resume with the same command plus --resume_from_checkpoint auto" in text
    # Outside a real cluster scontrol is absent: the script says the requeue failed and still exits 0.
    assert "requeueing job 4242" in text
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and int(checkpoints[-1].name.split("-")[1]) < 60
    assert not (out / "model.safetensors").exists()  # the final model is only saved by a finished run
    assert summary_steps(out) == [0]  # the baseline eval ran before the first step, hence before the signal

    # The requeued job runs the same command: it resumes from that checkpoint and finishes.
    env.pop("SLURM_JOB_ID")
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, tail(done.stdout, 4000) + tail(done.stderr, 4000)
    saved_at = int(checkpoints[-1].name.split("-")[1])
    assert (done.stdout + done.stderr).count("'loss'") == 60 - saved_at  # only the steps after the checkpoint
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h["step"] for h in history if "loss" in h]
    assert steps[-1] == 60 and (out / "model.safetensors").exists()
    assert summary_steps(out) == [0, 60]  # each scheduled eval exactly once across the preemption
