"""The figures of one finished training run, as docs/benchmarks.md tables: ``python benchmarks/run_figures.py RUN_DIR``.

Reads only (results/eval_logs summaries, trainer_state.json). Accuracy and format accuracy get the same
Wilson 95% intervals as the summaries (hf_sft.evaluation.stats). Generation tokens/s is the eval's response
tokens over its wall time (generation plus grading); training tokens/s is response tokens trained over
the Trainer's train_runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_sft.evaluation.stats import wilson_interval  # noqa: E402
from hf_sft.evaluation.results import read_summaries  # noqa: E402


def pct(successes: int, n: int) -> str:
    lo, hi = wilson_interval(successes, n) or (0.0, 1.0)
    return f"{100 * successes / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    summaries = read_summaries(args.run_dir)
    if not summaries:
        print(f"error: no eval summaries under {args.run_dir}/results/eval_logs", file=sys.stderr)
        return 2
    print("| step | n | format accuracy [Wilson 95%] | accuracy [Wilson 95%] | avg response tokens | "
          "eval wall s | generated tokens / s |")
    print("| ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for s in summaries:
        n = s["total_examples"]
        m = s["metrics"]
        correct = s["categorization"]["correct"]["count"]
        formatted = round(m["format_accuracy"] * n)
        tokens = (m["avg_response_length"] or 0) * n
        print(f"| {s['eval_step']} | {n} | {pct(formatted, n)} | {pct(correct, n)} | {m['avg_response_length']:.1f} | "
              f"{s['wall_time_s']:.0f} | {tokens / s['wall_time_s']:.1f} |")
    state_path = args.run_dir / "trainer_state.json"
    if state_path.is_file():
        history = json.loads(state_path.read_text())["log_history"]
        losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
        trained = sum(h.get("num_response_tokens", 0) for h in history if "loss" in h)
        runtime = next((h["train_runtime"] for h in history if "train_runtime" in h), None)
        print()
        if losses:
            print(f"loss: step {losses[0][0]} {losses[0][1]:.3f} -> step {losses[-1][0]} {losses[-1][1]:.3f}")
        if runtime:
            print(f"train_runtime {runtime:.0f} s; {trained} response tokens trained (summed over the logged "
                  f"intervals) -> {trained / runtime:.1f} response tokens / s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
