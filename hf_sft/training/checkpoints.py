"""Checkpoint directories of a run: ``checkpoint-N`` under output_dir, as the Trainer names them.

The name pattern lives here once, for resuming (train.py) and for the report's training curves, and the
module imports neither torch nor transformers, so the torch-free reporting wing can read checkpoints too.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-N directory in output_dir, newest first; [] when there is none."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in directory.iterdir()
                   if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name))), reverse=True)


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint-N whose trainer_state.json (written last by the Trainer) parses.

    A checkpoint killed while being written lacks it, or holds a truncated one: never chosen.
    """
    for step, path in checkpoint_dirs(output_dir):
        state = path / "trainer_state.json"
        try:
            if json.loads(state.read_text()).get("global_step") == step:
                return str(path)
        except (OSError, json.JSONDecodeError):
            pass
        logger.warning("Skipping incomplete checkpoint %s", path)
    return None
