"""A rank of a multi-process run leaves with status 0 after what a normal exit runs, minus the interpreter's
teardown; a single process is left alone. (The torchrun run in tests/e2e/test_ddp.py proves it on gloo.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

from hf_sft.training.rank_exit import exit_rank
from tests.helpers import REPO_ROOT

RANK = textwrap.dedent("""
    import atexit, sys, threading, time
    from types import SimpleNamespace
    from hf_sft.training.rank_exit import exit_rank

    class BlocksWhenCollected:  # what a normal interpreter exit would run, and hang in
        def __del__(self):
            time.sleep(3600)

    class Tracker:
        def finish(self):
            print("tracker finished")

    blocker = BlocksWhenCollected()
    atexit.register(print, "exit handler ran")  # wandb finishes its run in one of these
    worker = threading.Thread(target=lambda: (time.sleep(0.5), print("non-daemon thread done")))
    worker.start()
    print("buffered, not yet flushed", end="")
    exit_rank(SimpleNamespace(num_processes=int(sys.argv[1]), trackers=[Tracker()]))
    print("returned")
""")


def test_a_rank_runs_exit_handlers_and_threads_then_skips_the_teardown():
    proc = subprocess.run([sys.executable, "-c", RANK, "2"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env={"HF_SFT_TEARDOWN_TIMEOUT_S": "30", "PYTHONPATH": REPO_ROOT})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["buffered, not yet flushedtracker finished", "non-daemon thread done",
                                        "exit handler ran"], proc.stdout


def test_a_single_process_returns_to_its_caller():
    exit_rank(SimpleNamespace(num_processes=1, trackers=[]))  # would end pytest if it exited
