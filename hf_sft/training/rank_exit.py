"""How a process of a multi-process run ends: it waits for the others, then leaves without tearing gloo or NCCL down.

Once every rank has passed the last barrier, all outputs are on disk and no collective is left, so
destroying the process group and finalising the interpreter do nothing the run needs. They are
also where multi-process runs fail after their work is done, in ways that come and go with timing:
gloo's threads outliving the interpreter abort the rank ("terminate called without an active
exception", pytorch/pytorch#179291), and ``destroy_process_group`` or the interpreter exit can hang
(pytorch/pytorch#75097). This project's CI met each of them once (the abort, a 15-minute hang, a hang
ended by the watchdog below), and none came back in dozens of local repeats. So the command skips
that teardown: after the exit handlers (trackers such as wandb finish there) and a flush, the rank
ends with ``os._exit(0)``, and the kernel closes its sockets.
"""

from __future__ import annotations

import atexit
import faulthandler
import logging
import os
import sys
import threading


def teardown_deadline_s() -> float:
    """HF_SFT_TEARDOWN_TIMEOUT_S, default 300 s: room for trackers to finish uploading at exit."""
    return float(os.environ.get("HF_SFT_TEARDOWN_TIMEOUT_S", "300"))


def wait_for_every_rank(accelerator) -> None:
    """The last barrier: no rank leaves while rank 0 still saves and reports. A single process has none."""
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def exit_rank(accelerator) -> None:
    """End this rank with status 0 once its work is done, running what a normal exit runs except the teardown.

    Does nothing in a single process (whose exit has no gloo threads to race, and whose caller may go
    on). Call it only after ``wait_for_every_rank`` and only on success: a rank that raised must exit
    with its error. faulthandler's watchdog is a C thread that needs no GIL: if a tracker's upload or
    a user's thread never ends, past the deadline it prints every thread's stack and exits with status 1
    instead of holding torchrun (and a Slurm allocation) forever.
    """
    if accelerator.num_processes <= 1:
        return
    faulthandler.dump_traceback_later(teardown_deadline_s(), exit=True)
    for tracker in accelerator.trackers:  # what accelerator.end_training() does, less destroy_process_group
        tracker.finish()
    for thread in threading.enumerate():  # a normal exit waits for non-daemon threads too
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # wandb.finish, logging.shutdown, multiprocessing's finalizers: while Python is whole
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
