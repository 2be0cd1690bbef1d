"""What a pytest run cost, and on which machine: written for ``scripts/check_test_budget.py`` after every run.

The controller measures the machine at start (vector ISA, one-second fp32 GEMM rate: pytest's header
prints them) and its one-thread rate again at the end, sums each test's setup/call/teardown seconds as the
reports arrive, collects each worker's CPU time (its own and its reaped children's: the training runs,
torchrun ranks and vLLM workers the tests start) when the worker stops, and writes it all to
``.test-durations.json`` at the end.
Registered by tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import pytest

DURATIONS_FILE = os.environ.get("HF_SFT_TEST_DURATIONS", ".test-durations.json")


def cpu_seconds(children: bool = True) -> float:
    """User + system time of this process, and of every child it has waited for."""
    usages = [resource.getrusage(resource.RUSAGE_SELF)]
    if children:
        usages.append(resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in usages)


def is_worker(config) -> bool:
    return hasattr(config, "workerinput")


class SuiteBudget:
    def __init__(self, config):
        self.config = config
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
        from machine import describe

        self.machine = describe()
        self.start = time.monotonic()
        self.cpu_start = cpu_seconds(children=False)
        self.tests: dict[str, dict[str, float]] = {}
        self.outcomes: dict[str, int] = {}
        self.worker_cpu: dict[str, float] = {}

    def pytest_report_header(self, config):
        from machine import summary

        return [summary(self.machine) + " (benchmarks/machine.py)"]

    def pytest_runtest_logreport(self, report):
        self.tests.setdefault(report.nodeid, {})[report.when] = round(report.duration, 3)
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        self.worker_cpu[node.gateway.id] = getattr(node, "workeroutput", {}).get("cpu_s", 0.0)

    def pytest_sessionfinish(self, session, exitstatus):
        # Under xdist the workers are the controller's children: their CPU comes from them, not from here.
        own = cpu_seconds(children=not self.worker_cpu) - self.cpu_start
        wall = time.monotonic() - self.start
        self.remeasure()
        record = {
            "machine": self.machine,
            "workers": len(self.worker_cpu) or 1,
            "wall_s": round(wall, 1),
            "cpu_s": round(own + sum(self.worker_cpu.values()), 1),
            "cpu_s_by_worker": {"controller": round(own, 1), **{k: round(v, 1) for k, v in self.worker_cpu.items()}},
            "exitstatus": int(exitstatus),
            "outcomes": self.outcomes,
            "args": self.config.invocation_params.args,
            "tests": self.tests,
        }
        path = Path(self.config.rootpath) / DURATIONS_FILE
        path.write_text(json.dumps(record, indent=1) + "\n")

    def remeasure(self) -> None:
        """The one-thread rate read once more, after the tests, and the higher reading kept: a reading falls when
        something else shares the cores (0.5 s read 63-82 on one AVX2 machine from run to run), and the slow-class
        projection scales the whole suite by it. Outside the timed wall and CPU."""
        from machine import gemm_gflops

        _, end = gemm_gflops(1.0, threads=1)
        start = self.machine["gemm_gflops_per_cpu_s"]
        self.machine["gemm_gflops_per_cpu_s_readings"] = [start, round(end, 1)]
        self.machine["gemm_gflops_per_cpu_s"] = round(max(start, end), 1)


class WorkerCpu:
    """On an xdist worker: hand this worker's CPU seconds to the controller when it stops."""

    def __init__(self, config):
        self.config = config

    def pytest_sessionfinish(self, session, exitstatus):
        self.config.workeroutput["cpu_s"] = cpu_seconds()  # from the worker's start, imports included


def register(config) -> None:
    if is_worker(config):
        config.pluginmanager.register(WorkerCpu(config), "hf_sft_worker_cpu")
    elif not config.getoption("collectonly", False):
        config.pluginmanager.register(SuiteBudget(config), "hf_sft_suite_budget")
