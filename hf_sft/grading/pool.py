"""A process pool that grades untrusted model output with a hard per-item deadline.

Why not ``multiprocessing.Pool`` / ``concurrent.futures``: neither can abandon one stuck item, and a CAS call
on hostile input can hang in C code (big-integer arithmetic) where no signal reaches it. Here each worker
reports every item as it finishes, so the parent knows which item a worker is on and since when; a worker
past the deadline is killed (SIGKILL) and replaced, its item scores 0 as ``timed_out``, and the rest of its
chunk goes back to the queue. The parent uses no signals (``multiprocessing.connection.wait``), so ``grade``
works from any thread. Workers use no alarms either (math-verify's stay off): an exception raised at
an arbitrary bytecode can leave sympy/mpmath caches half-updated (seen: after an alarm interrupted
``e^{e^{e^{e^{e}}}}``, ``\\infty^{\\infty}`` graded equal to 72), so an item that overruns costs its worker,
and a worker that raised retires: no later item shares a process with an interrupted computation. The
worker's side (its loop and the messages on its pipe) is ``hf_sft.grading.pool_worker``.

Workers start with the ``forkserver`` method (``spawn`` where unavailable), never ``fork``: the trainer has
torch threads. The forkserver preloads this package and math-verify, so a replacement worker starts in
milliseconds, and never the caller's script (``forkserver_main``). Each worker caps its heap growth
(``RLIMIT_DATA``) so one ``10^{10^{10}}`` cannot exhaust RAM.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from multiprocessing.connection import wait

from hf_sft.grading import forkserver_main, lenient_equal, lenient_normalize, pool_worker, reference, \
    reference_normalize, registry
from hf_sft.grading.pool_worker import GradeTask, Graded, WorkerReady, fallback, worker_main
from hf_sft.grading.registry import GradeResult, reward_spec

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 120.0
MAX_START_FAILURES = 3
# Module objects, not strings: the forkserver silently skips a preload name that fails to import, so a stale
# string would quietly lose the warm start. registry imports the graders; the rest are what they import lazily.
# Not "__main__": forkserver_main (first) keeps the caller's script, e.g. train.py and all of torch, out of them.
PRELOAD = [*(m.__name__ for m in (forkserver_main, registry, lenient_normalize, lenient_equal, reference,
                                  reference_normalize, pool_worker)), __name__, "math_verify", "pylatexenc.latex2text"]


class _Worker:
    def __init__(self, ctx, args: tuple):
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child_conn, *args), daemon=True, name="hf-sft-grader")
        self.proc.start()
        child_conn.close()  # so the parent sees EOF when the worker dies
        self.ready = False
        self.since = time.monotonic()  # start time, or when its current item started
        self.inflight: deque[int] = deque()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class GradingPool:
    """Grades responses in worker processes; no item can take more than ``timeout`` seconds.

    >>> with GradingPool(timeout=5.0) as pool:
    ...     results = pool.grade(responses, ground_truths, reward_fn="r1_zero", finish_reasons=reasons)
    """

    def __init__(self, num_workers: int | None = None, timeout: float = DEFAULT_TIMEOUT_S, chunk_size: int = 32,
                 memory_limit_mb: int | None = 2048, start_method: str | None = None, _test_hooks: bool = False):
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = float(timeout)
        self.chunk_size = max(1, int(chunk_size))
        self.restarts = 0  # workers killed or lost and replaced, over the pool's life
        self._ctx = _context(start_method)
        self._args = (memory_limit_mb, _test_hooks)
        self._lock = threading.Lock()
        self._start_failures = 0
        self._workers = [_Worker(self._ctx, self._args) for _ in range(num_workers or min(4, os.cpu_count() or 1))]

    def __enter__(self) -> "GradingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (politely, then by force)."""
        with self._lock:
            for w in self._workers:
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
            for w in self._workers:
                w.proc.join(2)
                w.kill()
            self._workers = []

    def grade(self, responses, ground_truths, reward_fn: str = "r1_zero", finish_reasons=None, *,
              fast_path: bool = True, compare: bool = False, progress=None) -> list[GradeResult]:
        """One ``GradeResult`` per response, in order. Timed-out or failed items score 0 and say so.

        ``compare``: also grade with the other r1_zero grader (``alternate_reward``), within the same deadline.
        ``progress(done, total)`` is called as items finish (a long eval's progress line).
        """
        spec = reward_spec(reward_fn)  # ValueError naming the choices
        responses, ground_truths = list(responses), list(ground_truths)
        reasons = list(finish_reasons) if finish_reasons is not None else [None] * len(responses)
        if not len(responses) == len(ground_truths) == len(reasons):
            raise ValueError("responses, ground_truths and finish_reasons must have the same length")
        alternate = spec.alternate if compare else None
        tasks = [GradeTask(i, reward_fn, str(r or ""), str(g), f, fast_path, alternate)
                 for i, (r, g, f) in enumerate(zip(responses, ground_truths, reasons))]
        with self._lock:
            if not self._workers:
                raise RuntimeError("GradingPool is closed")
            graded = self._run(tasks, progress)
        return [g.result for g in graded]

    # -- the loop: dispatch chunks to idle workers, collect rows, kill what is past its deadline

    def _run(self, tasks: list[GradeTask], progress=None) -> list[Graded]:
        rows: list[Graded | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        left = len(tasks)
        while left:
            self._dispatch(tasks, pending)
            ready = wait([w.conn for w in self._workers], timeout=self._next_wakeup())
            for w in [w for w in self._workers if w.conn in ready]:
                left -= self._collect(w, tasks, rows, pending)
            left -= self._enforce_deadlines(tasks, rows, pending)
            if progress is not None:
                progress(len(tasks) - left, len(tasks))
        return rows

    def _dispatch(self, tasks: list[GradeTask], pending: deque) -> None:
        idle = [w for w in self._workers if w.ready and not w.inflight]
        for w in idle:
            if not pending:
                return
            size = min(self.chunk_size, math.ceil(len(pending) / len(self._workers)))
            ids = [pending.popleft() for _ in range(min(size, len(pending)))]
            w.inflight.extend(ids)
            w.since = time.monotonic()
            try:
                w.conn.send([tasks[i] for i in ids])
            except (OSError, ValueError):  # died while idle: nothing of this chunk is to blame
                self._retire(w, pending)

    def _collect(self, w: _Worker, tasks, rows, pending) -> int:
        """Read everything a worker has sent; returns how many items it finished."""
        done = 0
        try:
            while w.conn.poll():
                message = w.conn.recv()
                w.since = time.monotonic()
                if isinstance(message, WorkerReady):
                    w.ready, self._start_failures = True, 0
                    continue
                idx = w.inflight.popleft()
                assert idx == message.idx, "worker answered out of order"
                rows[idx] = message
                done += 1
                if message.retire:  # failed: the worker retires itself after such an item
                    self._retire(w, pending)
                    return done
        except (EOFError, OSError):
            w.proc.join(1)
            done += self._fail_current(w, tasks, rows, f"worker died (exit code {w.proc.exitcode})")
            self._retire(w, pending)
        return done

    def _enforce_deadlines(self, tasks, rows, pending) -> int:
        done, now = 0, time.monotonic()
        for w in list(self._workers):
            if w.inflight and now - w.since > self.timeout:
                done += self._fail_current(w, tasks, rows, None)
                logger.warning("grading item timed out after %.1fs; worker killed", self.timeout)
                self._retire(w, pending)
            elif not w.ready and now - w.since > READY_TIMEOUT_S:
                self._retire(w, pending)
        return done

    @staticmethod
    def _fail_current(w: _Worker, tasks, rows, error: str | None) -> int:
        """Charge the item ``w`` is on: timed out when ``error`` is None."""
        if not w.inflight:
            return 0
        head = w.inflight.popleft()
        rows[head] = fallback(tasks[head], timed_out=error is None, error=error)
        return 1

    def _retire(self, w: _Worker, pending: deque) -> None:
        """Kill ``w``, put its unfinished items back at the front of the queue, start a fresh worker."""
        w.kill()
        self.restarts += 1
        pending.extendleft(reversed(w.inflight))
        if not w.ready:
            self._start_failures += 1
            if self._start_failures > MAX_START_FAILURES:
                raise RuntimeError("grading workers fail to start; see their stderr")
        self._workers[self._workers.index(w)] = _Worker(self._ctx, self._args)

    def _next_wakeup(self) -> float:
        now, ends = time.monotonic(), [1.0]
        for w in self._workers:
            if w.inflight:
                ends.append(w.since + self.timeout - now)
            elif not w.ready:
                ends.append(w.since + READY_TIMEOUT_S - now)
        return max(0.0, min(ends)) + 0.001


def _context(start_method: str | None):
    """forkserver (preloading the grader) or spawn; never fork, the parent has threads."""
    methods = multiprocessing.get_all_start_methods()
    method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
    if method == "fork":
        raise ValueError("GradingPool does not fork: the caller has threads (torch); use forkserver or spawn")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
        _start_forkserver()
    return ctx


def _start_forkserver() -> None:
    """Start the (process-wide) forkserver now, telling it the name of our ``__main__`` (forkserver_main).
    A no-op when it already runs; the variable is gone again before anything else starts."""
    from multiprocessing import forkserver
    old = os.environ.get(forkserver_main.ENV)
    os.environ[forkserver_main.ENV] = forkserver_main.describe_main()
    try:
        forkserver.ensure_running()
    finally:
        if old is None:
            os.environ.pop(forkserver_main.ENV, None)
        else:
            os.environ[forkserver_main.ENV] = old
