"""The eval worker: a spawned process that owns the eval device, a vLLM engine and a grading pool.

It receives weight snapshots in shared memory, pushes them into its engine, then generates, grades and
writes results with the same `run_evaluation` as the in-process callback, and reports back over a queue.
Being its own process keeps vLLM's process-wide side effects out of the trainer, lets evaluation run
while training goes on, and lets a crash (or a SIGKILL) end only the worker.

Protocol (tuples on two `torch.multiprocessing` spawn queues):
    parent -> worker: ("init", WorkerSpec) first, then ("eval", step, SharedWeights) | ("stop",)
    worker -> parent: ("ready", startup_s) | ("released", step, push_s) | ("result", step, summary, timings)
                      | ("failed", step, traceback) | ("fatal", traceback)
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.multiprocessing as tmp

from hf_sft.evaluation.runner import EvalProblems
from hf_sft.generation.base import SamplingSettings
from hf_sft.generation.vllm import EngineOptions

logger = logging.getLogger(__name__)

_ALIGN = 64


SHM_HINT = ("shared memory (/dev/shm) is too small for the eval snapshots: in Docker run with --shm-size=16g "
            "(or --ipc=host); elsewhere enlarge /dev/shm, or set eval_backend: hf")


class SnapshotMemoryError(MemoryError):
    """Not enough shared memory for a weight snapshot; raised before any page is touched."""


def shm_free_bytes(path: str = "/dev/shm") -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _shared_bytes(n: int) -> torch.Tensor:
    """n bytes allocated in shared memory directly; ``share_memory_()`` allocates, then copies (3x slower).

    torch reserves the pages of the /dev/shm file at allocation (an undersized tmpfs fails here with
    ENOSPC, not later with SIGBUS), so a snapshot that does not fit is a SnapshotMemoryError to handle.
    """
    try:
        buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n))
    except (AttributeError, TypeError):  # a torch without the private helper
        buffer = torch.empty(n, dtype=torch.uint8).share_memory_()
    except RuntimeError as err:
        raise SnapshotMemoryError(f"cannot allocate {n / 2**20:.1f} MB of shared memory: {err}. {SHM_HINT}") from err
    return buffer


class SharedWeights:
    """A full state dict in one flat shared-memory buffer, with a view per tensor.

    One buffer means one shared-storage handle per hand-over (not one per tensor), and a buffer is
    reused for later snapshots of the same model. Tensors that share storage (a tied ``lm_head``) are
    stored once and listed under both names.
    """

    def __init__(self, layout: list[tuple[str, torch.dtype, tuple, int, str | None]], buffer: torch.Tensor,
                 cast: torch.dtype | None = None):
        self.layout = layout  # (name, dtype, shape, byte offset, name it aliases or None)
        self.buffer = buffer
        self.cast = cast

    @staticmethod
    def stored_dtype(t: torch.Tensor, cast: torch.dtype | None) -> torch.dtype:
        return cast if cast is not None and t.is_floating_point() else t.dtype

    @classmethod
    def plan(cls, state: dict[str, torch.Tensor], cast: torch.dtype | None = None):
        """(layout, bytes) of a snapshot; ``cast`` stores floating tensors in that dtype (fp32 master -> bf16)."""
        layout, seen, offset = [], {}, 0
        for name, t in state.items():
            dtype = cls.stored_dtype(t, cast)
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride())
            if key in seen:
                layout.append((name, dtype, tuple(t.shape), seen[key][1], seen[key][0]))
                continue
            offset = -(-offset // _ALIGN) * _ALIGN
            seen[key] = (name, offset)
            layout.append((name, dtype, tuple(t.shape), offset, None))
            offset += t.numel() * dtype.itemsize
        return layout, max(offset, 1)

    @classmethod
    def allocate(cls, state: dict[str, torch.Tensor], cast: torch.dtype | None = None) -> "SharedWeights":
        """Raises SnapshotMemoryError, before touching a page, when /dev/shm cannot hold it."""
        layout, nbytes = cls.plan(state, cast)
        return cls(layout, _shared_bytes(nbytes), cast)

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    def matches(self, state: dict[str, torch.Tensor]) -> bool:
        return len(state) == len(self.layout) and all(
            name in state and self.stored_dtype(state[name], self.cast) == dtype and tuple(state[name].shape) == shape
            for name, dtype, shape, _, _ in self.layout)

    def view(self, dtype: torch.dtype, shape: tuple, offset: int) -> torch.Tensor:
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        return self.buffer[offset: offset + nbytes].view(dtype).view(shape)

    def copy_from(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, dtype, shape, offset, alias in self.layout:
                if alias is None:
                    self.view(dtype, shape, offset).copy_(state[name])

    def named_tensors(self):
        for name, dtype, shape, offset, _ in self.layout:
            yield name, self.view(dtype, shape, offset)


@dataclass
class WorkerSpec:
    """Everything the worker needs to evaluate; picklable, sent once at start."""

    model_dir: str  # config + tokenizer; the engine starts on dummy weights and gets real ones pushed
    device: str
    problems: EvalProblems
    sampling: SamplingSettings
    output_dir: str
    model_name: str = ""
    reward_fn: str = "r1_zero"
    grading_timeout: float = 10.0
    grading_workers: int | None = None
    engine: EngineOptions = field(default_factory=lambda: EngineOptions(load_format="dummy"))
    log_level: int = logging.INFO


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
    _, spec = commands.get()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s[eval-worker]: %(message)s", level=spec.log_level)
    logging.getLogger("hf_sft").setLevel(spec.log_level)
    faulthandler.enable()  # a segfault in the engine leaves a traceback on stderr
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    grader = None
    try:
        from hf_sft.evaluation.runner import run_evaluation
        from hf_sft.grading.lenient import GradingPool
        from hf_sft.generation.vllm import VLLMGenerationBackend, select_device

        select_device(spec.device)  # before anything initialises CUDA
        # The grading pool starts first, so its processes do not inherit vLLM's LD_PRELOAD.
        grader = GradingPool(num_workers=spec.grading_workers, timeout=spec.grading_timeout)
        backend = VLLMGenerationBackend(spec.model_dir, device=spec.device, options=spec.engine)
    except BaseException:
        results.put(("fatal", traceback.format_exc()))
        if grader is not None:
            grader.close()
        return
    results.put(("ready", backend.startup_s))
    try:
        while True:
            try:
                message = commands.get()
            except Exception:  # e.g. out of memory mapping the next snapshot: say why before exiting
                results.put(("broken", traceback.format_exc()))
                break
            if message[0] == "stop":
                break
            step, weights = message[1], message[2]
            del message
            try:
                push_s = backend.push_weights(weights.named_tensors())
                del weights  # the parent may now overwrite that buffer
                results.put(("released", step, push_s))
                start = time.perf_counter()
                summary = run_evaluation(backend, spec.problems, spec.sampling, grader, eval_step=step,
                                         output_dir=spec.output_dir, model_name=spec.model_name,
                                         reward_fn=spec.reward_fn)
                results.put(("result", step, summary, {"push_s": push_s, "eval_s": time.perf_counter() - start}))
            except Exception:
                results.put(("failed", step, traceback.format_exc()))
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
        self.commands.put(("init", spec))
        self.started_at = time.perf_counter()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def submit(self, step: int, weights: SharedWeights) -> None:
        """Returns at once: a feeder thread sends the (small) shared-memory handle."""
        self.commands.put(("eval", step, weights))

    def messages(self) -> list[tuple]:
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
                self.commands.put(("stop",))
            except (OSError, ValueError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        for q in (self.commands, self.results):
            q.cancel_join_thread()
            q.close()
