"""Evaluation that never blocks training: snapshot the weights, hand them to the eval worker, go on.

At step 0 (baseline), every `eval_steps` and at the end, the callback copies the policy's weights into a
shared-memory buffer (hf_sft.evaluation.snapshots) and queues them for the worker (hf_sft.evaluation.worker);
the training loop waits only for that copy and hand-over (the "stall", logged). Results are logged against
the step they belong to (`eval/*` with `eval_step`) as soon as they arrive, polled at every step end. While
an eval runs, newer snapshots wait; with `policy="latest"` (default) only the newest waiting snapshot is
kept, with `policy="queue"` all are evaluated in order, at most `max_queued` waiting (then training waits
for a free buffer), so shared memory holds at most `max_queued + 1` snapshots. A worker that dies, hangs or
fails an eval (out of memory, say) is logged, stopped and replaced at the next eval (`WorkerSupervisor`); a
snapshot that does not fit in /dev/shm is a failed eval on disk, never a dead run; the run ends by draining
what is still pending (under DDP/FSDP/ZeRO within `ddp_timeout`, since the other ranks wait in a collective
meanwhile). Built from a recipe by hf_sft.evaluation.from_recipe.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import time
from collections import deque
from dataclasses import dataclass, field

from transformers import TrainerCallback

from hf_sft.evaluation.callback import log_side_metrics, should_evaluate
from hf_sft.evaluation.messages import Released, Result
from hf_sft.evaluation.results import completed_eval_steps, write_eval_failure
from hf_sft.evaluation.runner import done_line, started_line, summary_to_metrics
from hf_sft.evaluation.snapshots import (SharedWeights, SnapshotMemoryError, SnapshotPool, check_shared_memory,
                                         snapshot_bytes, torch_dtype, write_engine_model_dir)
from hf_sft.evaluation.messages import WorkerSpec
from hf_sft.evaluation.worker import EvalLost, WorkerSupervisor
from hf_sft.evaluation.worker_log import one_line
from hf_sft.generation.vllm import trainer_state_dict_for_push

logger = logging.getLogger(__name__)

POLICIES = ("latest", "queue")


@dataclass
class _Job:
    step: int
    slot: SharedWeights
    snapshot_at: float
    stall_s: float = 0.0
    released: bool = False


@dataclass
class EvalRecord:
    """What happened to one scheduled eval; the callback keeps them in `records`, by step."""

    step: int
    status: str  # done | failed | skipped
    stall_s: float = 0.0
    metrics: dict = field(default_factory=dict)
    error: str | None = None


class AsyncEvalCallback(TrainerCallback):
    """Hands weight snapshots to an eval worker process; logs results as they come back.

    ``spec`` is the worker's spec without ``model_dir``: the callback writes the model's config and
    tokenizer to a temporary directory for the engine to start from (on dummy weights).
    """

    def __init__(self, trainer, spec: WorkerSpec, *, eval_steps: int | None, baseline: bool = True,
                 policy: str = "latest", max_restarts: int = 3, drain_timeout_s: float | None = 3600.0,
                 stopped_early_drain_s: float = 30.0, eval_timeout_s: float | None = 3600.0, max_queued: int = 2,
                 engine_start_timeout_s: float | None = 300.0):
        if policy not in POLICIES:
            raise ValueError(f"eval policy must be one of {POLICIES}, got {policy!r}")
        self.trainer = trainer
        self.eval_steps = eval_steps
        self.baseline = baseline
        self.policy = policy
        self.drain_timeout_s = drain_timeout_s
        self.stopped_early_drain_s = stopped_early_drain_s  # preempted: a checkpoint matters more than an eval
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.max_queued = max_queued  # policy=queue: snapshots waiting for the worker, at most
        # eval_timeout_s: a worker with no result this long after its engine was up is killed;
        # engine_start_timeout_s: one whose engine is not up this long after its start is killed too.
        self.supervisor = WorkerSupervisor(spec, max_restarts=max_restarts, eval_timeout_s=eval_timeout_s,
                                           engine_start_timeout_s=engine_start_timeout_s)
        self.snapshot_dtype = torch_dtype(spec.engine.dtype)  # fp32 master weights go to the engine as bf16
        self.pool = SnapshotPool(self.snapshot_dtype)
        self.pending: deque[_Job] = deque()
        self.inflight: _Job | None = None
        self.scheduled: set[int] = set()
        self.records: dict[int, EvalRecord] = {}
        self.stall_total_s = 0.0
        self.train_start: float | None = None
        self._model_dir: str | None = None
        atexit.register(self.close)  # a crashed run must not leave a worker behind (or hang on it at exit)

    # ---------------------------------------------------------------- the worker's state, as the supervisor keeps it

    spec = property(lambda self: self.supervisor.spec)
    worker = property(lambda self: self.supervisor.worker)
    worker_ready = property(lambda self: self.supervisor.ready)  # the current worker's engine is up
    worker_starts = property(lambda self: self.supervisor.starts)
    failures_in_a_row = property(lambda self: self.supervisor.failures_in_a_row)
    disabled = property(lambda self: self.supervisor.disabled)
    eval_timeout_s = property(lambda self: self.supervisor.eval_timeout_s,
                              lambda self, value: setattr(self.supervisor, "eval_timeout_s", value))
    max_restarts = property(lambda self: self.supervisor.max_restarts,
                            lambda self, value: setattr(self.supervisor, "max_restarts", value))
    slots = property(lambda self: self.pool.slots)
    peak_slots = property(lambda self: self.pool.peak)

    # ---------------------------------------------------------------- trainer events

    @property
    def max_snapshots(self) -> int:
        """Shared-memory buffers the policy can hold at once: the one the worker reads plus those waiting."""
        return 1 + (1 if self.policy == "latest" else self.max_queued)

    def check_shared_memory(self) -> int:
        """At start: /dev/shm must hold one snapshot (error) and should hold ``max_snapshots`` (warning)."""
        nbytes = snapshot_bytes(self.trainer, self.snapshot_dtype)
        check_shared_memory(nbytes, self.max_snapshots, self.policy)
        return nbytes

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_start = time.perf_counter()
        # A resumed run keeps the results of steps it evaluated before it stopped (as the hf callback does).
        self.scheduled |= completed_eval_steps(args.output_dir)
        if self._is_main():
            self._write_model_dir()
        step = state.global_step
        if should_evaluate(step, self.eval_steps, self.baseline) and step not in self.scheduled:
            self._schedule(step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._is_main():
            self._timed(self._poll)
        step = state.global_step
        if step > 0 and should_evaluate(step, self.eval_steps, self.baseline) and step not in self.scheduled:
            self._schedule(step)

    def on_train_end(self, args, state, control, **kwargs):
        finished = bool(state.max_steps) and state.global_step >= state.max_steps
        if self.eval_steps and finished and state.global_step not in self.scheduled:
            self._schedule(state.global_step)
        if not self._is_main():
            return
        start = time.perf_counter()
        timeout = self.drain_timeout_s if finished else min(self.drain_timeout_s or 1e9, self.stopped_early_drain_s)
        timeout = drain_budget_s(timeout, args.world_size, args.ddp_timeout)
        self.drain(timeout)
        drain_s = time.perf_counter() - start
        elapsed = time.perf_counter() - (self.train_start or start)
        stall_fraction = self.stall_total_s / max(elapsed - drain_s, 1e-9)
        log_side_metrics(self.trainer, {"eval/drain_s": round(drain_s, 3),
                                        "eval/stall_total_s": round(self.stall_total_s, 3),
                                        "eval/stall_fraction": round(stall_fraction, 5)})
        counts = [sum(r.status == s for r in self.records.values()) for s in ("done", "failed", "skipped")]
        logger.info("async eval: %d done, %d failed, %d skipped; training loop stalled %.2fs in all; drained in %.1fs",
                    *counts, self.stall_total_s, drain_s)
        self.close()


    # ---------------------------------------------------------------- snapshot and hand-over

    def _is_main(self) -> bool:
        return self.trainer.is_world_process_zero()

    def _timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.stall_total_s += time.perf_counter() - start

    def _schedule(self, step: int) -> None:
        """Snapshot now (every rank: gathering sharded weights is a collective); queue on the main process."""
        self.scheduled.add(step)
        start = time.perf_counter()
        state = trainer_state_dict_for_push(self.trainer)
        if not self._is_main():
            return
        if self.policy == "queue" and len(self.pending) >= self.max_queued:
            self._wait_for_queue_room()
        if self.disabled:
            self.records[step] = EvalRecord(step, "skipped", error="async eval disabled after repeated failures")
            return
        if self.policy == "latest":
            while self.pending:
                dropped = self.pending.popleft()
                self.records[dropped.step] = EvalRecord(dropped.step, "skipped", dropped.stall_s,
                                                        error=f"superseded by step {step}")
                logger.warning("eval of step %d skipped: a newer snapshot (step %d) replaces it while the "
                               "worker is busy (policy=latest)", dropped.step, step)
        busy = [j.slot for j in self.pending]
        if self.inflight is not None and not self.inflight.released:
            busy.append(self.inflight.slot)
        try:
            slot = self.pool.free_slot(state, busy)
        except SnapshotMemoryError as err:  # /dev/shm full: this eval is lost, training is not
            state = None  # the gathered weights are freed now, not when training goes on
            stall = time.perf_counter() - start
            self.stall_total_s += stall
            self.records[step] = EvalRecord(step, "failed", stall, error=str(err))
            write_eval_failure(self.spec.output_dir, step, f"eval of step {step}: no snapshot taken: {err}")
            logger.error("eval of step %d failed: %s\nTraining goes on.", step, err)
            return
        slot.copy_from(state)
        del state
        job = _Job(step, slot, snapshot_at=time.perf_counter())
        self.pending.append(job)
        self._dispatch()
        job.stall_s = time.perf_counter() - start
        self.stall_total_s += job.stall_s
        logger.info("eval of step %d: snapshot %.3fs + hand-over %.3fs (%s)", step, job.snapshot_at - start,
                    job.stall_s - (job.snapshot_at - start),
                    "sent" if job is self.inflight else f"waiting, {len(self.pending)} pending")

    def _wait_for_queue_room(self) -> None:
        """policy=queue with ``max_queued`` snapshots waiting: training waits until the worker takes one."""
        logger.warning("eval queue full (%d waiting, eval_queue_size): training waits for the eval worker",
                       len(self.pending))
        while self.pending and len(self.pending) >= self.max_queued and not self.disabled:
            self._poll()
            time.sleep(0.05)

    def _dispatch(self) -> None:
        if self.inflight is not None or not self.pending:
            return
        if self.supervisor.worker is None and not self.supervisor.start(self._model_dir, self.pending[0].step):
            while self.pending:  # disabled after repeated failures
                job = self.pending.popleft()
                self.records[job.step] = EvalRecord(job.step, "skipped", job.stall_s, error="async eval disabled")
            return
        job = self.pending.popleft()
        self.supervisor.submit(job.step, job.slot)
        self.inflight = job

    def _write_model_dir(self) -> None:
        """Config, generation config and tokenizer: what vLLM needs to build the model (weights come by push)."""
        if self._model_dir is not None:
            return
        self._model_dir = write_engine_model_dir(self.trainer)

    # ---------------------------------------------------------------- results

    def _poll(self) -> None:
        self.supervisor.poll(self._on_reply)
        self._dispatch()

    def _on_reply(self, reply: Released | Result | EvalLost) -> None:
        job = self.inflight
        if job is None or job.step != reply.step:
            return
        if isinstance(reply, Released):
            job.released = True
            logger.info(started_line(reply.step, len(self.spec.problems), self.spec.sampling.num_samples))
        elif isinstance(reply, Result):
            now = time.perf_counter()
            metrics = {**summary_to_metrics(reply.summary),
                       "eval/push_s": round(reply.push_s, 4), "eval/stall_s": round(job.stall_s, 4),
                       "eval/latency_s": round(now - job.snapshot_at, 3),
                       "eval/stall_total_s": round(self.stall_total_s, 3)}
            if self.train_start is not None:
                metrics["eval/stall_fraction"] = round(self.stall_total_s / max(now - self.train_start, 1e-9), 5)
            self.records[reply.step] = EvalRecord(reply.step, "done", job.stall_s, metrics)
            self.inflight = None
            now_at = self.trainer.state.global_step
            late = f" (arrived at training step {now_at})" if now_at != reply.step else ""
            logger.info("%s%s", done_line(reply.summary, reply.summary_path or "results/eval_logs"), late)
            log_side_metrics(self.trainer, {**metrics, "eval_step": reply.step})
        elif isinstance(reply, EvalLost):
            self._fail(job, reply.error)

    def _fail(self, job: _Job, error: str) -> None:
        logger.error("%s. Training goes on; details in %s", one_line(error), self.supervisor.log_path)
        self.records[job.step] = EvalRecord(job.step, "failed", job.stall_s, error=error)
        write_eval_failure(self.spec.output_dir, job.step, error)
        self.inflight = None

    # ---------------------------------------------------------------- end of run

    def drain(self, timeout_s: float | None = None) -> None:
        """Wait for pending and running evals (restarting a dead worker as needed)."""
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        while self.pending or self.inflight is not None:
            self._poll()
            if deadline is not None and time.perf_counter() > deadline:
                logger.error("gave up waiting for %d pending eval(s) after %.0fs",
                             len(self.pending) + (self.inflight is not None), timeout_s)
                for job in ([self.inflight] if self.inflight is not None else []) + list(self.pending):
                    error = f"eval of step {job.step} abandoned: the end-of-run drain ran out of its {timeout_s:.0f}s"
                    self.records[job.step] = EvalRecord(job.step, "failed", job.stall_s, error=error)
                    write_eval_failure(self.spec.output_dir, job.step, error)
                self.inflight = None
                self.pending.clear()
                break
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the worker and free the buffers and the engine's model directory (idempotent)."""
        atexit.unregister(self.close)
        self.supervisor.stop()
        self.pool.clear()
        self.pending.clear()
        if self._model_dir is not None:
            shutil.rmtree(self._model_dir, ignore_errors=True)
            self._model_dir = None


def drain_budget_s(timeout_s: float | None, world_size: int, ddp_timeout: float) -> float | None:
    """The end-of-run drain, capped under several processes below ``ddp_timeout``.

    Only rank 0 drains; the other ranks meanwhile wait in the next collective (the final save), and
    the process group aborts one that waits longer than ``ddp_timeout``. 80% of it, minus a minute
    for the save itself.
    """
    if world_size <= 1:
        return timeout_s
    cap = max(0.0, 0.8 * ddp_timeout - 60.0)
    return cap if timeout_s is None else min(timeout_s, cap)
