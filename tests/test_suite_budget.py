"""The suite's own accounting: the once-per-run guard of expensive fixtures, the durations file, the budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.expensive_runs import claim

REPO_ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, str(Path(REPO_ROOT) / "scripts"))
import check_test_budget as budget  # noqa: E402

GROUPED_MODULE = '''
import pytest
from tests.expensive_runs import start_once

pytestmark = pytest.mark.xdist_group("shared")

@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    start_once(tmp_path_factory, "shared_run")
    return 42

@pytest.mark.parametrize("i", range(6))
def test_reads_the_run(shared_run, i):
    assert shared_run == 42
'''

CONFTEST = '''
from tests import suite_budget

def pytest_configure(config):
    suite_budget.register(config)
'''


def test_a_second_claim_names_the_first():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        assert claim(Path(d), "demo") is None
        assert "pid" in claim(Path(d), "demo")
        assert claim(Path(d), "smollm2") is None


def run_mini_suite(tmp_path: Path, dist: str, accounted: bool = True) -> tuple[subprocess.CompletedProcess, dict]:
    (tmp_path / "test_grouped.py").write_text(GROUPED_MODULE)
    if accounted:  # the budget plugin imports torch to measure the machine: only where the test reads it
        (tmp_path / "conftest.py").write_text(CONFTEST)
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "HF_SFT_TEST_DURATIONS": "durations.json"}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", dist, "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc, json.loads((tmp_path / "durations.json").read_text()) if accounted else {}


def test_grouped_fixture_starts_once_and_the_run_is_accounted(tmp_path):
    proc, record = run_mini_suite(tmp_path, "loadgroup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fp32 GEMM 2048x2048" in proc.stdout  # the machine in pytest's header
    assert record["workers"] == 2 and set(record["cpu_s_by_worker"]) == {"controller", "gw0", "gw1"}
    assert all(record["cpu_s_by_worker"][w] > 0 for w in ("gw0", "gw1"))
    assert record["outcomes"] == {"passed": 6} and len(record["tests"]) == 6
    assert {"setup", "call", "teardown"} <= set(next(iter(record["tests"].values())))
    assert record["machine"]["isa"] and record["machine"]["gemm_gflops"] > 0
    start, end = record["machine"]["gemm_gflops_per_cpu_s_readings"]  # read before and after the tests
    assert record["machine"]["gemm_gflops_per_cpu_s"] == max(start, end) > 0
    assert record["machine"]["python_runs_per_cpu_s"] > 0  # the interpreter's speed, for start-up-bound suites


def test_broken_grouping_fails_instead_of_running_twice(tmp_path):
    """`--dist load` ignores xdist_group: as when pytest 9.2 broke loadgroup, both workers build the run."""
    proc, _ = run_mini_suite(tmp_path, "load", accounted=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "'shared_run' was started a second time in this pytest run" in proc.stdout


def record(cpu_s: float, gflops: float, isa: str = "AVX2", **extra) -> dict:
    tests = {f"tests/test_x.py::test_{i}": {"setup": 0.0, "call": float(i), "teardown": 0.0} for i in range(1, 13)}
    return {"machine": {"isa": isa, "gemm_gflops": 2 * gflops, "gemm_gflops_per_cpu_s": gflops, "threads": 2,
                        "load_1min": 0.1}, "workers": 2, "wall_s": cpu_s / 2,
            "cpu_s": cpu_s, "exitstatus": 0, "outcomes": {"passed": 12}, "tests": tests, **extra}


def baseline(cpu_s: float, gflops: float, isa: str = "AVX2") -> dict:
    return {**record(cpu_s, gflops, isa), "recorded": "2026-12-03", "note": "test"}


def test_budget_lists_the_ten_slowest_with_their_share(capsys):
    budget.report(record(1000, 100), [baseline(1000, 100)])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "tests/test_x.py::" in line]
    assert len(lines) == 10 and "test_12" in lines[0] and "15.4%" in lines[0]  # 12 of the 78 summed seconds
    assert "within budget: 1.00x" in out


def test_budget_normalises_by_the_gemm_rate_and_warns_past_twenty_percent(capsys):
    # Twice the CPU seconds on a machine half as fast per CPU second is the same suite.
    assert not budget.report(record(2000, 50), [baseline(1000, 100)])
    assert budget.report(record(1250, 100), [baseline(1000, 100)])
    assert "WARNING: the suite grew: 1.25x" in capsys.readouterr().out
    # A baseline of another ISA class is not compared against.
    assert not budget.report(record(5000, 100), [baseline(1000, 300, isa="AVX512")])
    assert "no baseline for AVX2" in capsys.readouterr().out


def test_the_projection_scales_cpu_time_and_adds_the_waiting_unscaled(capsys):
    # 470 CPU-s in 300 s on two workers at 94 per CPU second: 940 CPU-s on the slow class (47), plus the 130
    # core-seconds the workers waited here, over two workers.
    budget.report({**record(470, 94), "wall_s": 300.0}, [])
    assert "~940 CPU s, ~535 s of pytest wall with 2 worker(s), 130 core-seconds of waiting" in capsys.readouterr().out


def test_only_a_green_two_worker_run_becomes_the_baseline(tmp_path):
    durations, base = tmp_path / "d.json", tmp_path / "b.json"
    durations.write_text(json.dumps(record(1000, 100, exitstatus=1)))
    assert budget.main(["--durations", str(durations), "--baseline", str(base), "--record", "x"]) == 1
    assert not base.exists()
    durations.write_text(json.dumps(record(1000, 100)))
    assert budget.main(["--durations", str(durations), "--baseline", str(base), "--record", "x"]) == 0
    assert json.loads(base.read_text())[0]["note"] == "x"
