"""One grading worker process: the messages on its pipe, and the loop that grades items until told to stop.

``hf_sft.grading.pool`` starts these processes and enforces the deadline from outside; a worker itself uses no
alarms (math-verify's stay off: an interrupted sympy can be left inconsistent), caps its heap growth, and
retires after any item whose computation raised, so no later item shares a process with a half-updated cache.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

from hf_sft.grading import lenient_equal, reference
from hf_sft.grading.registry import GradeResult, failure_type, grade_one, reward_spec


@dataclass(frozen=True)
class GradeTask:
    idx: int
    reward_fn: str
    response: str
    ground_truth: str
    finish_reason: str | None
    fast_path: bool
    alternate: str | None  # also grade with this grader (alternate_reward), or None


@dataclass(frozen=True)
class Graded:
    idx: int
    result: GradeResult
    retire: bool  # an exception escaped a computation: the worker leaves after sending this


@dataclass(frozen=True)
class WorkerReady:
    pid: int


def limit_memory(memory_limit_mb: int | None) -> None:
    """Cap heap growth at current use + the limit (RLIMIT_DATA: unlike RLIMIT_AS it ignores mapped libraries)."""
    if not memory_limit_mb:
        return
    try:
        import resource

        with open("/proc/self/status") as f:
            used_kb = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = used_kb * 1024 + memory_limit_mb * 2**20
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ImportError, OSError, ValueError, StopIteration):
        pass


def _test_hook(ground_truth: str) -> None:
    """Deliberately bad items, enabled only by ``GradingPool(_test_hooks=True)``, never by model output:
    ``__sleep__:S`` sleeps S seconds, ``__die__`` exits the worker."""
    if ground_truth.startswith("__sleep__:"):
        time.sleep(float(ground_truth.split(":", 1)[1]))
    elif ground_truth == "__die__":
        os._exit(3)


def fallback(task: GradeTask, timed_out: bool, error: str | None) -> Graded:
    """Result for an item that was not graded: rewards 0, format still judged (string scans only)."""
    failure = failure_type(task.response, task.reward_fn, task.finish_reason)
    result = GradeResult(float(failure is None), 0.0, 0.0, timed_out=timed_out, error=error, failure_type=failure)
    return Graded(task.idx, result, retire=error is not None)


def grade_task(task: GradeTask, test_hooks: bool) -> Graded:
    try:
        if test_hooks:
            _test_hook(task.ground_truth)
        result = grade_one(task.response, task.ground_truth, task.reward_fn, task.finish_reason,
                           fast_path=task.fast_path)  # no cas_timeout_s: no alarms in a worker (see above)
    except Exception as e:  # MemoryError and RecursionError included
        return fallback(task, False, f"{type(e).__name__}: {str(e)[:200]}")
    retire = False
    if task.alternate:
        try:
            result.alternate_reward = reward_spec(task.alternate).reward(
                task.response, task.ground_truth, fast_path=task.fast_path)["reward"]
        except Exception:  # the primary grade stands; the comparison is just missing for this item
            retire = True
    return Graded(task.idx, result, retire)


def worker_main(conn, memory_limit_mb: int | None, test_hooks: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it closes us
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    limit_memory(memory_limit_mb)
    lenient_equal.answers_equal("\\sqrt{8}", "2\\sqrt{2}", fast_path=False)  # warm up ANTLR before any clock runs
    reference.grade("\\frac{\\sqrt{3}}{2}", "0.866")  # and pylatexenc + simplify
    conn.send(WorkerReady(os.getpid()))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for task in chunk:
            graded = grade_task(task, test_hooks)
            conn.send(graded)
            if graded.retire:
                return  # an exception escaped mid-computation: state may be half-updated, so retire
