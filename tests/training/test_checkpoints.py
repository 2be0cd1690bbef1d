"""checkpoint-N directories: the newest complete one for resuming, and a module the reporting wing can import."""

from __future__ import annotations

import json
import subprocess
import sys

from hf_sft.training.checkpoints import checkpoint_dirs, latest_complete_checkpoint
from tests.helpers import REPO_ROOT


def test_latest_complete_checkpoint_never_picks_a_half_written_one(tmp_path):
    def make(step, state):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(state)

    make(2, json.dumps({"global_step": 2}))
    make(4, None)                      # killed before the state was written
    make(6, '{"global_step": 6, "log_')  # killed while writing it
    (tmp_path / "checkpoint-8.tmp").mkdir()
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert latest_complete_checkpoint(tmp_path / "missing") is None


def test_checkpoint_dirs_newest_first_by_step_not_by_name(tmp_path):
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-x", "checkpoint-11.tmp", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-12").write_text("a file, not a checkpoint")
    assert checkpoint_dirs(tmp_path) == [(10, tmp_path / "checkpoint-10"), (9, tmp_path / "checkpoint-9")]
    assert checkpoint_dirs(tmp_path / "missing") == []


def test_imports_neither_torch_nor_transformers():
    code = ("import sys, hf_sft.training.checkpoints; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
    assert out.strip() == "[]"
