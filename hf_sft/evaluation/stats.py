"""Statistics over graded eval records: intervals, breakdowns, pass@k / maj@k, grader disagreements.

Pure functions of the per-example records (``evaluation.build_records``), so the summary a run writes and
anything recomputed from its log agree. Why intervals: on 200 problems a 95% interval on 30% accuracy is
about ±6 points, so a 3-point change between steps is not evidence of anything.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from math import comb

Z95 = 1.959963984540054
MAX_LISTED = 200  # disagreement indices listed in a summary; the per-example log flags every one


def wilson_interval(successes: float, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval [low, high] for a proportion; None without trials.

    Wilson rather than the normal approximation: it stays inside [0, 1] and is honest at 0% and 100%
    (3% measured on 200 problems is [1.4%, 6.4%], not 3% ± 2.4%).
    """
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _rate(records: list[dict], key) -> float:
    return round(sum(key(r) for r in records) / len(records), 4) if records else 0.0


def group_stats(records: list[dict]) -> dict:
    """Accuracy and format accuracy with their intervals, and counts, for one slice of the records."""
    correct = sum(r["category"] == "correct" for r in records)
    formatted = sum(r["rewards"]["format_reward"] for r in records)
    return {
        "count": len(records),
        "problems": len({r.get("problem_index", r["index"]) for r in records}),
        "accuracy": _rate(records, lambda r: r["category"] == "correct"),
        "accuracy_ci95": wilson_interval(correct, len(records)),
        "format_accuracy": _rate(records, lambda r: r["rewards"]["format_reward"]),
        "format_accuracy_ci95": wilson_interval(formatted, len(records)),
    }


def breakdown(records: list[dict], field: str) -> dict[str, dict] | None:
    """``group_stats`` per value of ``field`` (MATH's ``subject`` / ``level``); None when no record has it."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get(field) is not None:
            groups[str(r[field])].append(r)
    if not groups:
        return None
    return {name: group_stats(rs) for name, rs in sorted(groups.items())}


def sampling_stats(records: list[dict], k: int) -> dict | None:
    """pass@k (unbiased) and maj@k over problems with k samples each; None for one sample per problem.

    maj@k: the most frequent normalised answer (``vote``; first seen wins a tie) among a problem's samples
    that have one; the problem counts as solved when the first sample giving that answer is correct.
    """
    if k <= 1:
        return None
    by_problem: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        by_problem[r["problem_index"]].append(r)
    passes, majority = [], []
    for samples in by_problem.values():
        c = sum(s["category"] == "correct" for s in samples)
        passes.append(pass_at_k(len(samples), c, min(k, len(samples))))
        votes = Counter(s["vote"] for s in samples if s.get("vote") is not None)
        if not votes:
            majority.append(0.0)
            continue
        winner = votes.most_common(1)[0][0]
        majority.append(float(next(s for s in samples if s.get("vote") == winner)["category"] == "correct"))
    n = len(by_problem)
    return {
        "num_samples": k,
        "problems": n,
        "pass_at_k": round(sum(passes) / n, 4) if n else 0.0,
        "maj_at_k": round(sum(majority) / n, 4) if n else 0.0,
        "maj_at_k_ci95": wilson_interval(sum(majority), n),
    }


def disagreements(records: list[dict]) -> dict | None:
    """How many records the other r1_zero grader judges differently, and which (``index`` in the log)."""
    compared = [r for r in records if r["grading"].get("alternate") is not None]
    if not compared:
        return None
    other = compared[0]["grading"]["alternate"]["reward_fn"]
    differ = [r for r in compared if r["grader_disagreement"]]
    return {
        "other_reward_fn": other,
        "count": len(differ),
        "compared": len(compared),
        "correct_only_here": sum(r["category"] == "correct" for r in differ),
        "correct_only_there": sum(r["category"] != "correct" for r in differ),
        "indices": [r["index"] for r in differ][:MAX_LISTED],
    }


def slug(name: str) -> str:
    """``Intermediate Algebra`` -> ``intermediate_algebra``: a tracker-safe metric name part."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "unknown"
