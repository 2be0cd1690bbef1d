"""Which machine a timing comes from: the CPU's vector ISA and a one-second fp32 GEMM rate.

The 2-core machines this project runs on differ about 3-4x in GEMM speed (AVX-512 at 250-350 GFLOP/s,
AVX2 at 80-100), and every slow test and benchmark is GEMM-bound, so a time without these figures is not
a figure. Printed at the start of ``make test`` (pytest's header) and of ``benchmarks/bench_sft.py``.

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


def gemm_gflops(seconds: float = 1.0, n: int = 2048) -> float:
    """fp32 ``torch.mm`` of two n x n matrices, repeated for ``seconds`` after two warm-ups, at torch's threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / elapsed / 1e9


def describe(seconds: float = 1.0) -> dict:
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "gemm_gflops": round(gemm_gflops(seconds), 1),
            "load_1min": round(os.getloadavg()[0], 2)}


def summary(info: dict) -> str:
    return (f"machine: {info['cores']} cores ({info['cpu']}), {info['isa']}, fp32 GEMM 2048x2048 "
            f"{info['gemm_gflops']:.0f} GFLOP/s with {info['threads']} threads, load {info['load_1min']}")


if __name__ == "__main__":
    print(summary(describe()))
