"""Which machine a timing comes from: the CPU's vector ISA and a one-second fp32 GEMM rate.

The 2-core machines this project runs on differ about 3-4x in GEMM speed (AVX-512 at 250-350 GFLOP/s,
AVX2 at 80-100), and every slow test and benchmark is GEMM-bound, so a time without these figures is not
a figure. The wall rate drops when other jobs share the cores; the one-thread rate per CPU second hardly
does, so CPU times are normalised by that one. Printed at the start of ``make test`` (pytest's header) and of ``benchmarks/bench_sft.py``.

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


def describe(seconds: float = 1.0) -> dict:
    """The wall rate at torch's threads (what a run here gets when nothing else runs), and the one-thread
    rate per CPU second (what normalises CPU time, even when the machine is busy)."""
    import torch

    wall, _ = gemm_gflops(seconds)
    _, per_cpu_s = gemm_gflops(seconds / 2, threads=1)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "gemm_gflops": round(wall, 1),
            "gemm_gflops_per_cpu_s": round(per_cpu_s, 1), "load_1min": round(os.getloadavg()[0], 2)}


def summary(info: dict) -> str:
    return (f"machine: {info['cores']} cores ({info['cpu']}), {info['isa']}, fp32 GEMM 2048x2048 "
            f"{info['gemm_gflops']:.0f} GFLOP/s with {info['threads']} threads "
            f"({info['gemm_gflops_per_cpu_s']:.0f} per CPU second on one), load {info['load_1min']}")


if __name__ == "__main__":
    print(summary(describe()))
