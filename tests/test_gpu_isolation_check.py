"""benchmarks/gpu_isolation_check.py (run by benchmarks/gpu_check.sh): on a machine without CUDA it skips, exit 0.

Its GPU path (initialise CUDA, hide the GPU, see it still used; then hf-sft's UUID check) needs a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_without_cuda_the_isolation_check_skips_and_succeeds():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_isolation_check.py"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gpu_isolation_check: skipped" in proc.stdout

