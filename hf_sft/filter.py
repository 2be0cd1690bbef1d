"""Keep only the SFT traces whose response is correct: ``python -m hf_sft.filter IN.jsonl OUT.jsonl``.

Why: reasoning traces distilled from a model are partly wrong, and SFT on a wrong trace teaches the
wrong answer as faithfully as a right one. Each ``response`` is graded against its ``ground_truth``
with the same grader as the evaluation (``GradingPool``: worker processes, a deadline per item), so
"correct" means the same thing at filtering and at evaluation time. The default is ``r1_zero``, the published
grader's strict rules, for the same reason: a kept trace then also teaches the exact ``</think> <answer>``
format the evaluation accepts (``--reward_fn r1_zero_lenient`` keeps traces with other whitespace there too;
on the MATH SFT traces that is 18% more data, see docs/benchmarks.md). Kept lines are copied verbatim.
Statistics (sizes, retention, categories, failure types, timeouts) are printed and saved beside the
output as ``OUT.stats.json`` (``.jsonl`` replaced).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from hf_sft.data.loading import DataFormatError, check_jsonl
from hf_sft.grading.registry import CATEGORIES, REWARD_FN_NAMES, categorize, reward_spec
from hf_sft.evaluation.results import atomic_write_text

CHUNK = 64  # items per pool call: the progress bar moves, the pool stays busy


def stats_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name.removesuffix(".jsonl") + ".stats.json")


def read_traces(path: Path) -> list[tuple[str, dict]]:
    """(raw line, record) for every non-blank line; bad lines raise an error naming file and line."""
    if not path.is_file():
        raise DataFormatError(f"input file not found: {path}")
    fmt = check_jsonl(path)
    if fmt != "sft":
        raise DataFormatError(f"{path}: records are in {fmt} format; filtering needs SFT traces "
                              "{prompt, response, ground_truth}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            truth = record.get("ground_truth")
            if truth is None or not str(truth).strip():
                raise DataFormatError(f"{path}:{lineno}: field 'ground_truth' is missing or empty; "
                                      "a trace cannot be graded without it")
            rows.append((line.rstrip("\n"), record))
    return rows


def _percent(n: int, total: int) -> dict:
    return {"count": n, "percentage": round(100.0 * n / total, 2) if total else 0.0}


def filter_traces(input_path, output_path, reward_fn: str = "r1_zero", timeout: float = 10.0,
                  num_workers: int | None = None, progress: bool = True) -> dict:
    """Grade, write the correct traces to ``output_path``, save and return the statistics."""
    from hf_sft.grading.pool import GradingPool

    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.resolve() == output_path.resolve():
        raise ValueError("the output must not overwrite the input")
    reward_spec(reward_fn)  # a ValueError naming the choices, before any worker starts
    rows = read_traces(input_path)
    start = time.perf_counter()
    grades = []
    with GradingPool(num_workers=num_workers, timeout=timeout) as pool, \
            tqdm(total=len(rows), desc="Grading traces", unit="ex", disable=not progress) as bar:
        for i in range(0, len(rows), CHUNK):
            chunk = rows[i:i + CHUNK]
            grades += pool.grade([r["response"] for _, r in chunk], [str(r["ground_truth"]) for _, r in chunk],
                                 reward_fn=reward_fn)
            bar.update(len(chunk))
    categories = [categorize(g) for g in grades]
    kept = [line for (line, _), cat in zip(rows, categories) if cat == "correct"]
    atomic_write_text(output_path, "".join(line + "\n" for line in kept))
    total = len(rows)
    failures = Counter(g.failure_type or "other" for g, c in zip(grades, categories) if c == "format_failure")
    stats = {
        "input": str(input_path),
        "output": str(output_path),
        "reward_fn": reward_fn,
        "original_size": total,
        "filtered_size": len(kept),
        "retention_rate": round(len(kept) / total, 4) if total else 0.0,
        "categories": {c: _percent(categories.count(c), total) for c in CATEGORIES},
        "format_failure_types": {k: _percent(v, total) for k, v in sorted(failures.items())},
        "timeouts": sum(g.timed_out for g in grades),
        "grading_errors": sum(g.error is not None for g in grades),
        "grading_timeout_s": timeout,
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(stats_path(output_path), json.dumps(stats, indent=2) + "\n")
    return stats


def format_stats(stats: dict) -> str:
    lines = [f"{stats['input']} -> {stats['output']} ({stats['reward_fn']})",
             f"  original size   {stats['original_size']}",
             f"  filtered size   {stats['filtered_size']}",
             f"  retention rate  {100 * stats['retention_rate']:.2f}%"]
    for name, c in stats["categories"].items():
        lines.append(f"  {name:<15} {c['count']:>6}  ({c['percentage']:.2f}%)")
    for name, c in stats["format_failure_types"].items():
        lines.append(f"    {name:<22} {c['count']:>6}")
    lines.append(f"  timeouts        {stats['timeouts']}   (grading errors {stats['grading_errors']})")
    lines.append(f"  wall time       {stats['wall_time_s']:.1f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-sft-filter", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="SFT traces {prompt, response, ground_truth} (JSONL)")
    parser.add_argument("output", help="where the correct traces go (JSONL); statistics beside it")
    parser.add_argument("--reward_fn", default="r1_zero", choices=sorted(REWARD_FN_NAMES))
    parser.add_argument("--timeout", type=float, default=10.0, help="grading deadline per trace, seconds")
    parser.add_argument("--num_workers", type=int, default=None, help="grading processes (default: up to 4)")
    args = parser.parse_args(argv)
    try:
        stats = filter_traces(args.input, args.output, args.reward_fn, args.timeout, args.num_workers)
    except (DataFormatError, ValueError) as err:
        print(f"hf-sft-filter: error: {err}", file=sys.stderr)
        return 2
    print(format_stats(stats))
    print(f"statistics saved to {stats_path(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
