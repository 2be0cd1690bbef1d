"""Which machine a timing comes from: the CPU's vector ISA, a one-second fp32 GEMM rate, and the interpreter's speed.

The 2-core machines this project runs on differ about 2-4x in GEMM speed (AVX-512 at 140-350 GFLOP/s,
AVX2 at 80-150), and training is GEMM-bound, so a time without these figures is not a figure. The wall
rate drops when other jobs share the cores; the one-thread rate per CPU second hardly does, so CPU times
are normalised by that one. Most of the test suite's CPU is start-up (imports) instead, which follows the
core and the interpreter: the Python rate (a fixed compile-and-exec workload per CPU second) says how fast
that is. Printed at the start of ``make test`` (pytest's header) and of ``benchmarks/bench_sft.py``.

    .venv/bin/python benchmarks/machine.py
"""

from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_gflops(seconds: float = 1.0, n: int = 2048, threads: int | None = None) -> tuple[float, float]:
    """fp32 ``torch.mm`` of two n x n matrices for ``seconds`` after two warm-ups: (GFLOP per wall second,
    GFLOP per CPU second of this process). The second hardly moves when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            torch.mm(a, b)
        count, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - start) < seconds:
            torch.mm(a, b)
            count += 1
        flop = 2 * n**3 * count / 1e9
        return flop / elapsed, flop / max(time.process_time() - cpu_start, 1e-9)
    finally:
        torch.set_num_threads(before)


# Import-like work in pure Python: parse and compile a module's source, then run it (functions, a class, dicts).
_PYTHON_WORK = "\n".join(
    [f"def f{i}(x, y=({i}, 'a')):\n    return {{k: v for k, v in zip(range(x), y * x)}}" for i in range(40)]
    + ["class C:\n" + "".join(f"    def m{i}(self):\n        return [str(j) for j in range({i})]\n" for i in range(40))]
    + ["FUNCS = (" + ", ".join(f"f{i}" for i in range(40)) + ")",
       "TABLE = {f'key{i}': FUNCS[i % 40](8) for i in range(200)}", "C().m39()"])


def python_rate(seconds: float = 0.5) -> float:
    """Runs of a fixed compile-and-exec workload per CPU second: the suite's ~90 processes spend most of their
    start-up importing, which scales with the core and the interpreter, not with the vector unit."""
    count, cpu_start = 0, time.process_time()
    while (elapsed := time.process_time() - cpu_start) < seconds:
        exec(compile(_PYTHON_WORK, "<python_rate>", "exec"), {})  # our own constant source, never input
        count += 1
    return count / elapsed


def describe(seconds: float = 1.0) -> dict:
    """The wall rate at torch's threads (what a run here gets when nothing else runs), and the one-thread
    rate per CPU second (what normalises CPU time, even when the machine is busy)."""
    import torch

    wall, _ = gemm_gflops(seconds)
    _, per_cpu_s = gemm_gflops(seconds / 2, threads=1)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "gemm_gflops": round(wall, 1),
            "gemm_gflops_per_cpu_s": round(per_cpu_s, 1), "python_runs_per_cpu_s": round(python_rate(seconds / 2), 1),
            "load_1min": round(os.getloadavg()[0], 2)}


def summary(info: dict) -> str:
    return (f"machine: {info['cores']} cores ({info['cpu']}), {info['isa']}, fp32 GEMM 2048x2048 "
            f"{info['gemm_gflops']:.0f} GFLOP/s with {info['threads']} threads "
            f"({info['gemm_gflops_per_cpu_s']:.0f} per CPU second on one), "
            f"Python {info.get('python_runs_per_cpu_s', 0):.0f} runs per CPU second, load {info['load_1min']}")


if __name__ == "__main__":
    print(summary(describe()))
