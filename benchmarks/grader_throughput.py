"""Grader throughput and self-equivalence: every ground-truth answer, wrapped as an r1_zero response, must
grade as correct against itself. Each failure is a normalisation or CAS bug to fix or explain.

Passes: ``fast`` (the normal path: normalised string/number comparison first, CAS when needed), ``cas``
(skips the fast path, so the LaTeX parser and math-verify see every answer), and ``parse`` (lists the answers
the LaTeX parser cannot read at all: those are graded by exact normalised-string match only).

    .venv/bin/python benchmarks/grader_throughput.py [--data ../shared/data/math/validation.jsonl]
        [--workers N] [--timeout 5] [--limit N] [--passes fast,cas,parse]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hf_sft.grading.lenient import extract_ground_truth
from hf_sft.grading.pool import GradingPool

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math" / "validation.jsonl"


def load_answers(path: Path, limit: int | None) -> list[str]:
    """Ground truths: MATH ``answer`` fields, or GSM8K solutions (``#### N``)."""
    with path.open() as f:
        answers = [json.loads(line)["answer"] for line in f if line.strip()]
    return answers[:limit] if limit else answers


def run_pass(pool: GradingPool, truths: list[str], fast_path: bool, reward_fn: str = "r1_zero_lenient") -> dict:
    responses = [f"</think> <answer> {extract_ground_truth(t)} </answer>" for t in truths]
    start = time.perf_counter()
    results = pool.grade(responses, truths, fast_path=fast_path, reward_fn=reward_fn)
    wall = time.perf_counter() - start
    failures = [(t, r) for t, r in zip(truths, results) if r.reward != 1.0]
    return {"items": len(truths), "wall_s": wall, "items_per_s": len(truths) / wall,
            "accuracy": 1 - len(failures) / len(truths), "timed_out": sum(r.timed_out for r in results),
            "errors": sum(r.error is not None for r in results), "failures": failures}


def unparsable(truths: list[str]) -> list[str]:
    """Answers the LaTeX parser cannot read (in-process, trusted data): only an exact normalised-string match
    can grade them, so a model that writes them any other way is marked wrong."""
    from sympy import Basic, MatrixBase

    from hf_sft.grading.lenient_equal import cas_parse
    from hf_sft.grading.lenient_normalize import normalize_answer

    answers = [extract_ground_truth(t) for t in truths]
    return [a for a in answers
            if not any(isinstance(x, (Basic, MatrixBase)) for x in cas_parse(normalize_answer(a, keep_percent=True)))]


def report(name: str, stats: dict) -> None:
    print(f"[{name}] {stats['items']} items in {stats['wall_s']:.2f}s = {stats['items_per_s']:.0f} items/s; "
          f"self-equivalence {100 * stats['accuracy']:.2f}%; timed out {stats['timed_out']}; "
          f"errors {stats['errors']}")
    for truth, r in stats["failures"]:
        why = "timed out" if r.timed_out else (r.error or "not equal")
        print(f"    FAIL {extract_ground_truth(truth)!r}: {why}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--passes", default="fast,cas,parse", help="comma-separated: fast, cas, parse")
    parser.add_argument("--reward_fn", default="r1_zero_lenient",
                        help="r1_zero_lenient (the math-verify path these passes were written for) or r1_zero")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: no data file at {args.data}")
        return 0
    truths = load_answers(args.data, args.limit)
    start = time.perf_counter()
    with GradingPool(num_workers=args.workers, timeout=args.timeout) as pool:
        pool.grade(["</think> <answer> 1 </answer>"], ["1"])  # wait for the workers to be up
        print(f"pool of {len(pool._workers)} workers ready in {time.perf_counter() - start:.2f}s")
        for name in [p for p in args.passes.split(",") if p in ("fast", "cas")]:
            report(name, run_pass(pool, truths, fast_path=(name == "fast"), reward_fn=args.reward_fn))
        print(f"workers restarted: {pool.restarts}")
    if "parse" in args.passes.split(","):
        start = time.perf_counter()
        missed = unparsable(truths)
        print(f"[parse] {len(truths) - len(missed)}/{len(truths)} answers parse to sympy "
              f"({time.perf_counter() - start:.1f}s in-process); string-match only:")
        for answer in missed:
            print(f"    {answer!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
