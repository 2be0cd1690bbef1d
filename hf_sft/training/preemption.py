"""Surviving preemption: SIGTERM -> checkpoint at the next step boundary (resuming from the newest complete
checkpoint is ``checkpoints.latest_complete_checkpoint``).

Slurm (and most schedulers) send SIGTERM some time before killing a job. The handler only sets a flag;
the callback turns it into `should_save` + `should_training_stop` at the next step end, so the
checkpoint is written by the Trainer's own code, between steps, never from inside a signal handler.

Under several processes the signal is per rank (one rank may get it a step before another, or alone):
a rank that stopped while the others ran on would leave them hanging in the next step's all-reduce. So
the flag is all-reduced (MAX) at every step end and all ranks stop, and save, at the same step. The
cost is one 4-byte all-reduce per optimizer step (and the host sync it implies).
"""

from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class PreemptionCallback(TrainerCallback):
    """On SIGTERM (or SIGUSR1), save a checkpoint at the next step boundary and stop cleanly."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.signals = signals
        self.received: int | None = None
        self.stopped = False  # this rank stopped for a signal (its own or another rank's)
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _agreed(self, args) -> bool:
        """True on every rank when any rank received the signal (one all-reduce under several processes)."""
        local = self.received is not None
        if args.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return local
        flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=args.device)  # gloo: cpu, nccl: cuda
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            why = signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
            logger.warning("Received %s: saving a checkpoint at step %d and stopping (rank %d)", why,
                           state.global_step, args.process_index)
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def preempted(self) -> bool:
        return self.received is not None or self.stopped
