"""The only writer under a run's results/: per-example eval logs and summaries, written atomically; and their
readers, so that the file names are known here alone.

A file either exists complete or not at all (temp file + fsync + rename), so a crash mid-eval
leaves earlier evals intact and readable by the plotting code. Imports neither torch nor transformers:
the reporting wing reads runs through this module.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

# eval_step_{N}_{T}.jsonl, as write_eval_results names a per-example log (T: its timestamp).
EVAL_LOG_NAME = re.compile(r"^eval_step_(\d+)_(.+)\.jsonl$")


def eval_logs_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "results" / "eval_logs"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others (and by servers)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_eval_results(output_dir, eval_step: int, records: list[dict], summary: dict) -> tuple[Path, Path]:
    """Write eval_step_{N}_{T}.jsonl, then summary_eval_step_{N}_{T}.json (the summary last, so a
    summary on disk always has its per-example log beside it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    directory = eval_logs_dir(output_dir)
    # A log left without its summary by a crash is superseded by this evaluation of the same step.
    for orphan in directory.glob(f"eval_step_{eval_step}_*.jsonl"):
        if not (directory / f"summary_{orphan.stem}.json").exists():
            orphan.unlink()
    log_path = directory / f"eval_step_{eval_step}_{stamp}.jsonl"
    summary_path = directory / f"summary_eval_step_{eval_step}_{stamp}.json"
    atomic_write_text(log_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(summary_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return log_path, summary_path


def write_eval_failure(output_dir, eval_step: int, error: str) -> Path:
    """failed_eval_step_{N}_{T}.json: an eval that produced no results, so the gap is on disk, explained."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = eval_logs_dir(output_dir) / f"failed_eval_step_{eval_step}_{stamp}.json"
    atomic_write_text(path, json.dumps({"eval_step": eval_step, "status": "failed", "error": error,
                                        "time": stamp}, indent=2, ensure_ascii=False) + "\n")
    return path


def worker_log_path(output_dir) -> Path:
    """results/eval_worker.log: the eval worker's own output (vLLM's logging, warnings, stderr), appended."""
    return Path(output_dir) / "results" / "eval_worker.log"


def open_worker_log(output_dir) -> tuple[Path, int]:
    """The worker log's path and a file descriptor appending to it (the worker points its stdout/stderr there)."""
    path = worker_log_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def completed_eval_steps(output_dir) -> set[int]:
    """Steps with a summary on disk (a summary is written after its per-example log)."""
    return {s["eval_step"] for s in read_summaries(output_dir) if "eval_step" in s}


def read_summaries(output_dir) -> list[dict]:
    """All readable summaries of a run, by eval step; unreadable files are skipped, not fatal."""
    summaries = []
    for path in sorted(eval_logs_dir(output_dir).glob("summary_eval_step_*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):  # valid JSON that is no summary (an array, a number) is skipped too
            summaries.append(data)
    return sorted(summaries, key=lambda s: s.get("eval_step", 0))


def latest_summaries(output_dir) -> list[dict]:
    """Readable summaries, one per eval step (the latest when a step was evaluated twice), by step."""
    by_step = {}
    for s in read_summaries(output_dir):
        if isinstance(s.get("eval_step"), int) and isinstance(s.get("metrics"), dict):
            by_step[s["eval_step"]] = s  # read_summaries is sorted by step, then file name (timestamp)
    return [by_step[k] for k in sorted(by_step)]


def latest_eval_logs(output_dir) -> dict[int, Path]:
    """The per-example log of each evaluated step (the latest when a step was evaluated twice), by step."""
    latest: dict[int, Path] = {}
    for path in sorted(eval_logs_dir(output_dir).glob("eval_step_*.jsonl")):
        m = EVAL_LOG_NAME.match(path.name)
        if m:
            latest[int(m.group(1))] = path
    return dict(sorted(latest.items()))


def read_eval_records(output_dir) -> dict[int, list[dict]]:
    """Per-example eval records by step (the latest log of a step); lines that do not parse are skipped."""
    out = {}
    for step, path in latest_eval_logs(output_dir).items():
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        out[step] = records
    return out
