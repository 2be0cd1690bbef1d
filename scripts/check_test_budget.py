"""After `make test`: the ten slowest tests with their share, and a warning when the suite grows.

Reads what tests/suite_budget.py wrote (``.test-durations.json``: per-test seconds, the workers' CPU time,
the machine's ISA and fp32 GEMM rates) and compares the suite's CPU time, converted to the slow class of
CI machines (CPU s x this machine's one-thread GEMM GFLOP per CPU second / that class's), with the baseline
recorded in ``tests/suite_budget_baseline.json``. CPU time and a per-CPU-second rate both hold still when
other jobs share the cores; wall time does not. The conversion is first-order: the slow tests are
GEMM-bound runs, but start-ups and Python scale with the core, not the vector unit, so a run is compared
with the baseline of its own ISA class. It warns at +20% and never fails the run: a budget should speak
before CI time breaks, not become flaky itself.

    .venv/bin/python scripts/check_test_budget.py                  # after a pytest run
    .venv/bin/python scripts/check_test_budget.py --record "why"   # make this run the baseline for its ISA
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARN_GROWTH = 1.20
# The slow class of 2-core CI machines (issue 20: AMD EPYC, AVX2): 85 GFLOP/s with two threads, 47 with one.
SLOW_CLASS = {"gemm_gflops": 85, "gemm_gflops_per_cpu_s": 47}
CI_LIMIT_S = 15 * 60


def per_cpu_rate(machine: dict) -> float:
    return machine.get("gemm_gflops_per_cpu_s") or machine["gemm_gflops"] / max(machine.get("threads", 1), 1)


def normalised(record: dict) -> float:
    """The run's CPU seconds as they would be on the slow class."""
    return record["cpu_s"] * per_cpu_rate(record["machine"]) / SLOW_CLASS["gemm_gflops_per_cpu_s"]


def idle_core_seconds(record: dict) -> float:
    """Core-seconds the run left unused (workers x wall - CPU): timeouts, sleeps and polls, which take as long on
    a slower machine, and a worker that finished first. Added to the projection unscaled."""
    return max(max(record["workers"], 1) * record["wall_s"] - record["cpu_s"], 0.0)


def test_seconds(times: dict) -> float:
    return sum(times.values())


def report(record: dict, baselines: list[dict], out=None) -> bool:
    """Print the report; True when the suite grew past the warning line."""
    out = out or sys.stdout
    m = record["machine"]
    tests = record["tests"]
    total = sum(test_seconds(t) for t in tests.values()) or 1.0
    readings = m.get("gemm_gflops_per_cpu_s_readings")
    read = f" (the higher of {readings[0]:.0f} before the tests and {readings[1]:.0f} after)" if readings else ""
    python = f", Python {m['python_runs_per_cpu_s']:.0f} runs per CPU second" if "python_runs_per_cpu_s" in m else ""
    print(f"test budget: {m['isa']}, fp32 GEMM {m['gemm_gflops']:.0f} GFLOP/s, "
          f"{per_cpu_rate(m):.0f} per CPU second{read}{python} (load {m['load_1min']} at start), "
          f"{record['workers']} worker(s): wall {record['wall_s']:.0f} s, CPU {record['cpu_s']:.0f} s, "
          f"summed test time {total:.0f} s over {len(tests)} tests", file=out)
    print("ten slowest (setup + call + teardown):", file=out)
    for nodeid, times in sorted(tests.items(), key=lambda kv: -test_seconds(kv[1]))[:10]:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in times.items() if v >= 0.5)
        print(f"  {test_seconds(times):7.1f} s {100 * test_seconds(times) / total:5.1f}%  {nodeid}  ({parts})", file=out)
    norm = normalised(record)
    workers = max(record["workers"], 1)
    waited = idle_core_seconds(record)
    print(f"on the slow class ({SLOW_CLASS['gemm_gflops']} GFLOP/s, {SLOW_CLASS['gemm_gflops_per_cpu_s']} per CPU "
          f"second): ~{norm:.0f} CPU s, ~{(norm + waited) / workers:.0f} s of pytest wall with {workers} worker(s), "
          f"{waited:.0f} core-seconds of waiting included as measured here (CI's limit: {CI_LIMIT_S} s, install "
          f"included)", file=out)
    same = [b for b in baselines if b["machine"]["isa"] == m["isa"]]
    if not same:
        print(f"no baseline for {m['isa']} in tests/suite_budget_baseline.json (record one with --record)", file=out)
        return False
    base = same[-1]
    growth = norm / normalised(base)
    verdict = "WARNING: the suite grew" if growth > WARN_GROWTH else "within budget"
    print(f"{verdict}: {growth:.2f}x the {m['isa']} baseline of {base['recorded']} ({normalised(base):.0f} "
          f"slow-class CPU s, {base['note']}); warns above {WARN_GROWTH:.2f}x", file=out)
    return growth > WARN_GROWTH


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--durations", type=Path, default=REPO / ".test-durations.json")
    p.add_argument("--baseline", type=Path, default=REPO / "tests" / "suite_budget_baseline.json")
    p.add_argument("--record", metavar="NOTE", help="store this run as the baseline for its ISA, with a note")
    args = p.parse_args(argv)
    if not args.durations.exists():
        print(f"test budget: no {args.durations.name} (pytest wrote none: did it run?)")
        return 0
    record = json.loads(args.durations.read_text())
    baselines = json.loads(args.baseline.read_text()) if args.baseline.exists() else []
    report(record, baselines)
    if args.record:
        if record["exitstatus"] != 0 or record["workers"] < 2:
            print("not recorded: a baseline is a full, green, two-worker run")
            return 1
        entry = {key: record[key] for key in ("machine", "workers", "wall_s", "cpu_s", "outcomes")}
        entry.update(recorded=date.today().isoformat(), note=args.record)
        kept = [b for b in baselines if b["machine"]["isa"] != record["machine"]["isa"]]
        args.baseline.write_text(json.dumps(kept + [entry], indent=1) + "\n")
        print(f"recorded as the {record['machine']['isa']} baseline in {args.baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
