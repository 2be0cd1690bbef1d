"""Two processes with gloo DDP (torchrun, and accelerate launch through Open MPI) learn the same as one
process with the same global batch.

Tolerance: the two runs see the same examples per optimizer step and the token-normalised loss is
divided by the global response-token count, so they differ only by float summation order (the
gradient all-reduce adds the two halves in another order than one process does). Over 12 steps
of Adam that stays well under 1e-3 relative on the loss; a wrong normalisation (e.g. averaging two
per-process means) shows up at 1e-2 and above on this data, whose examples differ in length.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.expensive_runs import start_once
from tests.helpers import REPO_ROOT, tail

# One worker runs the module: its tests share the one-process baseline (and never race for ports).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]

# --ddp_timeout: a collective that never completes is an error with its stack in 2 minutes, not a 15-minute
# subprocess timeout with none (the gloo timeout is 30 minutes by default).
COMMON = ["recipes/demo.yaml", "--max_steps", "12", "--logging_steps", "1", "--eval_backend", "none",
          "--learning_rate", "1e-3", "--warmup_steps", "0", "--ddp_timeout", "120"]


def losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"


def run(cmd, env):
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd}\n{tail(proc.stdout, 3000)}\n{tail(proc.stderr, 6000)}"
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # A rank that hangs on its way out prints its threads' stacks and exits after 60 s (training/rank_exit.py).
    return {**os.environ, "HF_SFT_CACHE": str(tmp_path_factory.mktemp("assets")), "OMP_NUM_THREADS": "1",
            "HF_SFT_TEARDOWN_TIMEOUT_S": "60"}


@pytest.fixture(scope="module")
def single_process_losses(tmp_path_factory):
    """The one-process run, in this pytest process (``train.main``): a process of its own would spend ~6 CPU-s
    importing torch and transformers for a second of training, and what is compared is the same either way."""
    start_once(tmp_path_factory, "ddp_single_process_baseline")
    from hf_sft.train import main

    single = tmp_path_factory.mktemp("single")
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the recipe's paths are relative to the repository, as for the commands below
    try:
        main([*COMMON, "--per_device_train_batch_size", "8", "--output_dir", str(single)])
    finally:
        os.chdir(cwd)
    return losses(single)


def assert_same_learning(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert y == pytest.approx(x, rel=1e-3), (a, b)
    assert a[-1] < a[0]


# Runs hf_sft/train.py as torchrun would, in a process whose interpreter exit would never end: the object's
# destructor runs when the interpreter finalises __main__, as gloo's teardown does (rank_exit.py's reasons).
HANGS_ON_INTERPRETER_EXIT = """
import runpy
import time


class BlocksWhenCollected:
    def __del__(self):
        time.sleep(3600)


blocker = BlocksWhenCollected()
runpy.run_path("hf_sft/train.py", run_name="__main__")
"""


def test_torchrun_two_processes_match_one_process_fsdp_on_cpu_says_ddp_and_no_rank_waits_on_teardown(
        tmp_path, env, single_process_losses):
    """accelerate enables FSDP only on GPU-type devices: two CPU processes asked for it run plain DDP, say so,
    and learn what one process learns. Each rank then leaves without the interpreter's teardown, so one that
    would hang there still exits 0 at once. (One run for the three proofs: a torchrun start costs two start-ups.)"""
    launcher = tmp_path / "hangs_on_interpreter_exit.py"
    launcher.write_text(HANGS_ON_INTERPRETER_EXIT)
    double = tmp_path / "ddp"
    proc = run([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29571", str(launcher), *COMMON,
                "--per_device_train_batch_size", "4", "--output_dir", str(double)],
               {**env, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})
    assert "FSDP was asked for (fsdp / ACCELERATE_USE_FSDP) but accelerate runs as MULTI_CPU" in proc.stderr
    assert "plain DDP" in proc.stderr
    assert "Timeout (0:01:00)!" not in proc.stderr  # faulthandler's watchdog did not have to end a rank
    assert_same_learning(single_process_losses, losses(double))


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs Open MPI's mpirun (apt-get install -y openmpi-bin)")
def test_accelerate_launch_through_mpirun_matches_one_process(tmp_path, env, single_process_losses):
    """accelerate's multi-CPU launch: `accelerate launch --cpu --num_processes 2 --mpirun_hostfile H`."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    mpi_env = {**env, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
               "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    accelerate = str(Path(sys.executable).parent / "accelerate")
    proc = run([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mpirun_hostfile",
                str(hostfile), "--mixed_precision", "no", "--dynamo_backend", "no", "hf_sft/train.py", *COMMON,
                "--per_device_train_batch_size", "4", "--log_level", "info", "--output_dir", str(tmp_path / "mpi")],
               mpi_env)
    # Two processes of 4 examples each, not one process of 4.
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in proc.stdout + proc.stderr
    assert_same_learning(single_process_losses, losses(tmp_path / "mpi"))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_sigterm_to_one_rank_stops_both_at_the_same_step_and_resume_finishes(tmp_path, env):
    """SIGTERM reaches one DDP rank only: both ranks checkpoint at the same step, exit 0; resume trains the rest."""
    import signal
    import time

    out = tmp_path / "run"
    steps = 60
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", "29573", "hf_sft/train.py", *COMMON,
           "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--save_strategy", "no",
           "--output_dir", str(out)]
    log = tmp_path / "torchrun.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=sink,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while "'loss'" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert proc.poll() is None and len(workers) == 2, tail(log.read_text(), 4000)
        os.kill(workers[-1], signal.SIGTERM)  # one rank only
        assert proc.wait(timeout=300) == 0, tail(log.read_text(), 6000)
    text = log.read_text()
    stops = sorted(line.split("at step ")[1].split()[0] for line in text.splitlines()
                   if "saving a checkpoint at step" in line)
    assert len(stops) == 2 and stops[0] == stops[1], tail(text, 4000)
    saved = int(stops[0])
    assert 0 < saved < steps
    checkpoint = out / f"checkpoint-{saved}"
    assert (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()
    assert not (out / "model.safetensors").exists()

    resumed = run([*cmd, "--resume_from_checkpoint", "auto"], env)
    assert (resumed.stdout + resumed.stderr).count("'loss'") == steps - saved  # only the remaining steps
    assert losses(out) and (out / "model.safetensors").exists()
