"""What the trainer and the eval worker say to each other over their two queues: one small dataclass each.

Commands (trainer -> worker): `Init` once (carrying the `WorkerSpec`), then `Evaluate` per snapshot, then `Stop`.
Replies (worker -> trainer): `Ready` once its engine is up (or `Fatal` if it could not start), then per
eval `Released` (the snapshot buffer may be reused), `Progress` for a long one, and `Result` or `Failed`; `Broken` when it could not
read its next command (it exits after saying so); `WorkerLog` whenever it logs what the console should show.

Module-level frozen dataclasses, so that they pickle across the spawn boundary by name; fields are read
by name, never by position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hf_sft.generation.vllm import EngineOptions

if TYPE_CHECKING:
    from hf_sft.evaluation.runner import EvalProblems
    from hf_sft.evaluation.snapshots import SharedWeights
    from hf_sft.generation.base import SamplingSettings


# ---------------------------------------------------------------- trainer -> worker

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
    first_step: int | None = None  # the eval this worker is started for, in the header of results/eval_worker.log


@dataclass(frozen=True)
class Init:
    """First command: everything the worker needs (sent by queue, not in the process's start-up pickle)."""

    spec: WorkerSpec


@dataclass(frozen=True)
class Evaluate:
    """Evaluate ``weights`` (a shared-memory handle: small to send) as the weights of ``step``."""

    step: int
    weights: SharedWeights


@dataclass(frozen=True)
class Stop:
    """Close the grading pool and the engine, and exit."""


# ---------------------------------------------------------------- worker -> trainer

@dataclass(frozen=True)
class Ready:
    """The grading pool and the engine are up."""

    startup_s: float


@dataclass(frozen=True)
class Released:
    """The weights of ``step`` are in the engine: the parent may overwrite that buffer."""

    step: int
    push_s: float


@dataclass(frozen=True)
class Result:
    """The eval of ``step`` is done and written under results/; ``summary`` is run_evaluation's."""

    step: int
    summary: dict
    push_s: float
    eval_s: float
    summary_path: str = ""


@dataclass(frozen=True)
class Failed:
    """The eval of ``step`` raised; the worker's engine may be unusable after it."""

    step: int
    traceback: str


@dataclass(frozen=True)
class Broken:
    """The worker could not read its next command (out of memory mapping a snapshot, say); it exits."""

    traceback: str


@dataclass(frozen=True)
class Fatal:
    """The worker could not start (grading pool or engine); it exits."""

    traceback: str


@dataclass(frozen=True)
class Progress:
    """How far the eval of ``step`` is: ``done`` of ``total`` samples ``stage`` ("generated" / "graded");
    sent at most once per 30 s."""

    step: int
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class WorkerLog:
    """A log record of the worker's that the console should show (an error, a memory warning), one line."""

    level: int
    logger: str
    message: str


COMMANDS = (Init, Evaluate, Stop)
REPLIES = (Ready, Released, Progress, Result, Failed, Broken, Fatal, WorkerLog)
