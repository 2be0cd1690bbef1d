"""Where the two r1_zero graders disagree on real traces: ``python benchmarks/grader_agreement.py FILE.jsonl``.

FILE has ``response`` and ``ground_truth`` per line (SFT traces, or an eval log ``eval_step_*.jsonl``).
Both graders run in one ``GradingPool`` pass (``compare=True``); the counts and a few examples of each kind
of disagreement are printed. Numbers go to docs/benchmarks.md ("The two r1_zero graders").
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from hf_sft.grading.lenient import r1_zero_lenient_reward_fn
from hf_sft.grading.pool import GradingPool
from hf_sft.grading.reference import format_failure_type


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--examples", type=int, default=5)
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.path, encoding="utf-8") if line.strip()]
    responses, truths = [r["response"] for r in rows], [str(r["ground_truth"]) for r in rows]
    start = time.perf_counter()
    with GradingPool() as pool:
        grades = pool.grade(responses, truths, reward_fn="r1_zero", compare=True)
    seconds = time.perf_counter() - start
    kinds: Counter = Counter()
    examples: dict[str, list] = {}
    for response, truth, g in zip(responses, truths, grades):
        if g.reward == g.alternate_reward:
            kinds["agree_correct" if g.reward else "agree_incorrect"] += 1
            continue
        if g.reward:
            kind = "reference_only"
        elif not g.format_reward and r1_zero_lenient_reward_fn(response, truth)["format_reward"]:
            kind = f"lenient_only:format:{format_failure_type(response)}"
        else:
            kind = "lenient_only:answer"
        kinds[kind] += 1
        examples.setdefault(kind, []).append((response[-120:], truth))
    print(f"{len(rows)} traces from {args.path}, graded twice in {seconds:.1f}s")
    print(f"reference r1_zero accuracy {sum(g.reward for g in grades) / len(rows):.4f}, "
          f"lenient {sum(g.alternate_reward or 0 for g in grades) / len(rows):.4f}")
    for kind, n in kinds.most_common():
        print(f"  {kind}: {n}")
    for kind, items in examples.items():
        print(f"\n{kind}:")
        for tail, truth in items[:args.examples]:
            print(f"    gt={truth!r}  ...{tail!r}")


if __name__ == "__main__":
    main()
