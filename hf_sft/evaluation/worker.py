"""The eval worker: a spawned process that owns the eval device, a vLLM engine and a grading pool.

It receives weight snapshots in shared memory, pushes them into its engine, then generates, grades and
writes results with the same `run_evaluation` as the in-process callback, and reports back over a queue.
Being its own process keeps vLLM's process-wide side effects out of the trainer, lets evaluation run
while training goes on, and lets a crash (or a SIGKILL) end only the worker.

`worker_main` is the process; `EvalWorker` is the parent's handle on one process; `WorkerSupervisor`
keeps one running for the callback: start, replies, death and hang detection, kill, restart policy.
They speak the dataclasses of hf_sft.evaluation.messages over two `torch.multiprocessing` spawn queues.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass, replace
from typing import Callable

import torch.multiprocessing as tmp

from hf_sft.evaluation.messages import (Broken, Evaluate, Failed, Fatal, Init, Progress, Ready, Released, Result,
                                        Stop, WorkerLog, WorkerSpec)
from hf_sft.evaluation.results import worker_log_path
from hf_sft.evaluation.runner import progress_line
from hf_sft.evaluation.snapshots import SharedWeights
from hf_sft.evaluation.worker_log import forward_to_console, one_line, send_output_to_log

logger = logging.getLogger(__name__)


def _exit_with_parent() -> None:
    """End this worker when the trainer is gone (killed, OOM): its queue pipes would never say so."""
    import multiprocessing
    import threading
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(1)  # the grading pool's processes see their pipes close and exit too

    threading.Thread(target=watch, name="hf-sft-parent-watch", daemon=True).start()


def worker_main(commands, results) -> None:
    """The worker's loop: start the grader and the engine, then serve evals until told to stop."""
    _exit_with_parent()
    spec = commands.get().spec
    # Its output (vLLM's logging, warnings, stderr) goes to results/eval_worker.log, not to the trainer's console.
    send_output_to_log(spec.output_dir, spec.first_step, spec.model_dir, spec.log_level)
    faulthandler.enable()  # a segfault in the engine leaves a traceback on stderr (the log file)
    grader = None
    try:
        from hf_sft.evaluation.runner import ThrottledProgress, run_evaluation
        from hf_sft.grading.pool import GradingPool
        from hf_sft.generation.vllm import VLLMGenerationBackend, select_device

        select_device(spec.device)  # before anything initialises CUDA
        # The grading pool starts first, so its processes do not inherit vLLM's LD_PRELOAD.
        grader = GradingPool(num_workers=spec.grading_workers, timeout=spec.grading_timeout)
        backend = VLLMGenerationBackend(spec.model_dir, device=spec.device, options=spec.engine)
    except BaseException:
        logger.error("the eval worker could not start", exc_info=True)
        results.put(Fatal(traceback.format_exc()))
        if grader is not None:
            grader.close()
        return
    forward_to_console(results)  # after the engine is up: vLLM reconfigures its logger while it starts
    results.put(Ready(backend.startup_s))
    try:
        while True:
            try:
                message = commands.get()
            except Exception:  # e.g. out of memory mapping the next snapshot: say why before exiting
                logger.error("could not read the next command", exc_info=True)
                results.put(Broken(traceback.format_exc()))
                break
            if isinstance(message, Stop):
                break
            step, weights = message.step, message.weights
            del message
            try:
                push_s = backend.push_weights(weights.named_tensors())
                del weights  # the parent may now overwrite that buffer
                results.put(Released(step, push_s))
                start, written = time.perf_counter(), []
                summary = run_evaluation(backend, spec.problems, spec.sampling, grader, eval_step=step,
                                         output_dir=spec.output_dir, model_name=spec.model_name,
                                         reward_fn=spec.reward_fn, on_written=written.append,
                                         progress=ThrottledProgress(lambda stage, done, total, step=step: results.put(
                                             Progress(step, stage, done, total))))
                results.put(Result(step, summary, push_s=push_s, eval_s=time.perf_counter() - start,
                                   summary_path=written[0]))
                backend.rest()  # eval_vllm_sleep_level: give the GPU memory back until the next push
            except Exception:
                logger.error("eval of step %d failed", step, exc_info=True)
                results.put(Failed(step, traceback.format_exc()))
    finally:
        grader.close()
        backend.close()


class EvalWorker:
    """The parent's handle on one worker process (spawn context: no fork of a process with threads)."""

    def __init__(self, spec: WorkerSpec):
        ctx = tmp.get_context("spawn")
        self.commands = ctx.Queue()
        self.results = ctx.Queue()
        self.process = ctx.Process(target=worker_main, args=(self.commands, self.results),
                                   name="hf-sft-eval-worker", daemon=False)  # daemons cannot have children
        self.process.start()
        # The spec goes by queue, not in the start-up pickle: start() writes that pickle into a pipe and,
        # past the pipe's 64 KiB, blocks until the child has imported everything (seconds of stall).
        self.commands.put(Init(spec))
        self.started_at = time.perf_counter()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def submit(self, step: int, weights: SharedWeights) -> None:
        """Returns at once: a feeder thread sends the (small) shared-memory handle."""
        self.commands.put(Evaluate(step, weights))

    def messages(self) -> list:
        out = []
        while True:
            try:
                out.append(self.results.get_nowait())
            except queue.Empty:
                return out
            except (EOFError, OSError, ValueError):  # a pipe broken by a dying worker
                return out

    def alive(self) -> bool:
        return self.process.is_alive()

    def exit_description(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def stop(self, timeout: float = 30.0) -> None:
        """Ask politely, then kill; never blocks on a dead worker's pipes."""
        if self.process.is_alive():
            try:
                self.commands.put(Stop())
            except (OSError, ValueError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        for q in (self.commands, self.results):
            q.cancel_join_thread()
            q.close()


@dataclass(frozen=True)
class EvalLost:
    """The submitted eval will give no result: the worker failed it, died or hung; ``error`` says which, whole."""

    step: int
    error: str


class WorkerSupervisor:
    """One eval worker at a time: starts it, reads its replies, notices that it died or hung, kills it.

    A worker that dies, hangs (no result ``eval_timeout_s`` after both the submit and its engine being up),
    does not get its engine up within ``engine_start_timeout_s`` of its start, or fails an eval is killed at once (a failed engine may hold half-freed memory); the next eval starts
    a new one, until more than ``max_restarts`` failures in a row disable evaluation (``disabled``).
    The callback decides what is evaluated when; ``poll`` tells it what became of what it submitted.
    """

    def __init__(self, spec: WorkerSpec, *, max_restarts: int = 3, eval_timeout_s: float | None = 3600.0,
                 engine_start_timeout_s: float | None = 300.0):
        self.spec = spec  # without model_dir: each start gets the one the callback wrote
        self.max_restarts = max_restarts
        self.eval_timeout_s = eval_timeout_s
        self.engine_start_timeout_s = engine_start_timeout_s
        self.worker: EvalWorker | None = None
        self.ready = False  # the current worker's engine is up
        self.ready_at: float | None = None
        self.starts = 0
        self.failures_in_a_row = 0
        self.disabled = False
        self.last_error: str | None = None
        self.step: int | None = None  # the eval submitted to the current worker, until its result or loss
        self.submitted_at: float | None = None

    @property
    def log_path(self) -> str:
        return str(worker_log_path(self.spec.output_dir))

    def start(self, model_dir: str | None, step: int | None = None) -> bool:
        """A new worker (for the eval of ``step``), unless too many failed in a row (then ``disabled``, and False)."""
        if self.failures_in_a_row > self.max_restarts:
            self.disabled = True
            logger.error("async eval disabled: the eval worker failed %d times in a row; training goes on "
                         "without evaluation. Last error: %s (details in %s)", self.failures_in_a_row,
                         one_line(self.last_error or "none"), self.log_path)
            return False
        self.worker = EvalWorker(replace(self.spec, model_dir=model_dir, first_step=step))
        self.ready = False
        self.starts += 1
        logger.info("started eval worker (pid %d) on %s; its output goes to %s", self.worker.pid, self.spec.device,
                    self.log_path)
        return True

    def submit(self, step: int, weights: SharedWeights) -> None:
        self.worker.submit(step, weights)
        self.step, self.submitted_at = step, time.perf_counter()

    def poll(self, on_reply: Callable[[Released | Result | EvalLost], None]) -> None:
        """Read the worker's replies, then check it is alive and not hung; ``on_reply`` gets what concerns
        the submitted eval: `Released`, then `Result` or `EvalLost`."""
        if self.worker is None:
            return
        alive = self.worker.alive()  # checked first: messages sent before dying are still read below
        for message in self.worker.messages():
            self._handle(message, on_reply)
            if self.worker is None:  # stopped after a failed eval
                return
        if not alive:
            self._died(on_reply)
        elif self._start_overdue():
            self._kill_unstarted(on_reply)
        elif self._hung():
            self._kill_hung(on_reply)

    def _handle(self, message, on_reply) -> None:
        mine = self.step is not None and getattr(message, "step", None) == self.step
        if isinstance(message, Ready):
            self.ready = True
            self.ready_at = time.perf_counter()
            logger.info("eval worker ready (engine started in %.1fs)", message.startup_s)
        elif isinstance(message, Released) and mine:
            on_reply(message)
        elif isinstance(message, Progress) and mine:
            logger.info(progress_line(message.step, message.stage, message.done, message.total))
        elif isinstance(message, Result) and mine:
            self.step = None
            self.failures_in_a_row = 0
            on_reply(message)
        elif isinstance(message, Failed) and mine:
            self.last_error = message.traceback
            self._lose(on_reply, message.step,
                       f"eval of step {message.step} failed in the worker:\n{message.traceback}")
            # An engine that failed mid-generation (out of host or device memory, most often) may hold
            # half-freed buffers or stuck requests: the next eval gets a fresh worker.
            logger.error("eval worker (pid %d) stopped after the failure; the next eval restarts it", self.worker.pid)
            self._discard()
        elif isinstance(message, Broken):  # the worker could not read its next command; it exits after this
            self.last_error = message.traceback
        elif isinstance(message, Fatal):
            self.last_error = message.traceback
            logger.error("eval worker could not start: %s (traceback in %s)", one_line(message.traceback),
                         self.log_path)
        elif isinstance(message, WorkerLog):
            logger.log(message.level, "eval worker: %s: %s (see %s)", message.logger, message.message, self.log_path)

    def _lose(self, on_reply, step: int, error: str) -> None:
        self.step = None
        self.failures_in_a_row += 1
        on_reply(EvalLost(step, error))

    def _hung(self) -> bool:
        if self.step is None or self.eval_timeout_s is None or self.submitted_at is None or not self.ready:
            return False
        started = max(self.submitted_at, self.ready_at or self.submitted_at)
        return time.perf_counter() - started > self.eval_timeout_s

    def _start_overdue(self) -> bool:
        """The engine is not up ``engine_start_timeout_s`` after the worker started (``_hung`` times only up ones)."""
        if self.ready or self.engine_start_timeout_s is None:
            return False
        return time.perf_counter() - self.worker.started_at > self.engine_start_timeout_s

    def _kill_unstarted(self, on_reply) -> None:
        pid, step = self.worker.pid, self.step
        error = (f"eval worker (pid {pid}) did not get its engine up within eval_engine_start_timeout_s="
                 f"{self.engine_start_timeout_s:g}s: killed; the next eval restarts it")
        self.last_error = error
        self._discard()
        if step is None:
            logger.error("%s", error)
            self.failures_in_a_row += 1
        else:
            self._lose(on_reply, step, f"eval of step {step} lost: {error}")

    def _kill_hung(self, on_reply) -> None:
        pid, step = self.worker.pid, self.step
        self._discard()
        self._lose(on_reply, step, f"eval of step {step} gave no result within "
                   f"eval_timeout_s={self.eval_timeout_s:g}s: worker (pid {pid}) killed; the next eval restarts it")

    def _died(self, on_reply) -> None:
        detail = f"eval worker (pid {self.worker.pid}) died: {self.worker.exit_description()}"
        if self.step is not None:
            self._lose(on_reply, self.step, f"{detail}, during the eval of step {self.step}"
                       + (f"; its last error:\n{self.last_error}" if self.last_error else ""))
        else:
            logger.error("%s; the next eval restarts it", detail)
            self.failures_in_a_row += 1
        self._discard()

    def _discard(self) -> None:
        """Kill the current worker at once (a hung or failed engine does not answer a polite stop)."""
        self.worker.stop(timeout=0)
        self.worker = None
        self.step = None

    def stop(self) -> None:
        """Stop the worker politely (then kill it); idempotent."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
            self.step = None
