"""The worker's log file: harmless vLLM warnings dropped at their logger, errors shortened for the console."""

from __future__ import annotations

import logging
import queue

from hf_sft.evaluation.messages import WorkerLog
from hf_sft.evaluation.worker_log import HARMLESS, ConsoleForwarder, HarmlessWarnings, one_line, vllm_logging_config


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_known_harmless_vllm_warnings_are_dropped_and_others_kept():
    keep = HarmlessWarnings().filter
    for prefix, text, _ in HARMLESS:
        assert not keep(record(f"{prefix}.v1.worker.cpu_worker", logging.WARNING, text + " and more"))
    assert keep(record("vllm.v1.engine", logging.WARNING, "Some new warning"))
    assert keep(record("vllm.v1.engine", logging.ERROR, HARMLESS[0][1]))  # never an error
    config = vllm_logging_config("INFO")
    assert config["handlers"]["file"]["filters"] == ["harmless"] and not config["loggers"]["vllm"]["propagate"]


def test_errors_and_memory_warnings_of_libraries_are_forwarded_hf_sfts_own_are_not():
    results = queue.Queue()
    forward = ConsoleForwarder(results)
    forward.emit(record("vllm.v1.engine.core", logging.ERROR, "EngineCore died\nTraceback ..."))
    forward.emit(record("vllm.v1.core", logging.WARNING, "not enough KV cache for the batch"))
    forward.emit(record("vllm.v1.core", logging.WARNING, "something else"))
    forward.emit(record("hf_sft.evaluation.worker", logging.ERROR, "eval of step 2 failed"))  # sent as Failed
    got = []
    while not results.empty():
        got.append(results.get())
    assert got == [WorkerLog(logging.ERROR, "vllm.v1.engine.core", "EngineCore died"),
                   WorkerLog(logging.WARNING, "vllm.v1.core", "not enough KV cache for the batch")]


def test_one_line_keeps_the_first_line_and_the_exception():
    error = "eval of step 4 failed in the worker:\nTraceback (most recent call last):\n  File x\nMemoryError: oom\n"
    assert one_line(error) == "eval of step 4 failed in the worker: MemoryError: oom"
    assert one_line("worker died: killed by SIGKILL") == "worker died: killed by SIGKILL"
