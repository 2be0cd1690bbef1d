"""A module-scoped expensive run (the demo, SmolLM2, the DDP baseline, ...) starts once per pytest run.

Several tests read one such run, and an xdist_group keeps them on one worker. When the grouping silently
breaks (pytest 9.2 with xdist 3.8 did: pytest-dev/pytest-xdist#1386), each worker starts its own copy and
CI time doubles without a single failure. So each such fixture calls ``start_once`` first: it claims a
marker shared by every worker of this pytest run and fails the test if the run was already started.
Torch-free, so that ``tests/test_suite_budget.py`` can exercise it in a small pytest run of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_by_workers(tmp_path_factory, name: str) -> Path:
    """One directory per pytest run, the same for all xdist workers: each worker's basetemp is
    ``<the controller's basetemp>/popen-gwN``, so the controller's is the parent."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / name
    path.mkdir(exist_ok=True)
    return path


def markers_dir(tmp_path_factory) -> Path:
    return shared_by_workers(tmp_path_factory, "expensive-runs-started")


def claim(directory: Path, name: str) -> str | None:
    """Claim ``name`` in ``directory``; returns None, or who claimed it first if it was already claimed."""
    me = os.environ.get("PYTEST_XDIST_WORKER", "the only process")
    try:
        fd = os.open(directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return (directory / name).read_text() or "another worker"
    with os.fdopen(fd, "w") as f:
        f.write(f"{me} (pid {os.getpid()})")
    return None


def start_once(tmp_path_factory, name: str) -> None:
    first = claim(markers_dir(tmp_path_factory), name)
    if first is not None:
        me = os.environ.get("PYTEST_XDIST_WORKER", "the only process")
        pytest.fail(f"the expensive run {name!r} was started a second time in this pytest run (first by {first}, "
                    f"now by {me}): its tests' xdist_group no longer keeps them on one worker, or a fixture's "
                    f"scope changed. Run pytest with -n 2 --dist loadgroup, and check the pytest/xdist versions "
                    f"against pyproject.toml's pins.", pytrace=False)
