"""Rows and markdown tables of evaluation summaries: what summary.md, the terminal and report.html show.

Rows are plain dicts (one per eval step, or per subject/level), so the markdown here and the HTML in
``html.py`` format the same numbers. A value a summary lacks (an older run, another backend) is None and
shows as a dash.
"""

from __future__ import annotations


def format_interval(interval) -> str | None:
    """``[0.241, 0.367]`` for a Wilson interval; None when the summary has none (older runs)."""
    if not interval or len(interval) != 2 or not all(isinstance(v, (int, float)) for v in interval):
        return None
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A GitHub-markdown table (also readable as plain text in a terminal)."""
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


SUMMARY_COLUMNS = [("step", "step"), ("accuracy", "accuracy"), ("accuracy_ci", "95% CI"),
                   ("format_accuracy", "format accuracy"), ("format_accuracy_ci", "format 95% CI"),
                   ("response_length", "response length"), ("entropy", "entropy")]


def summary_rows(summaries: list[dict]) -> list[dict]:
    """One row per eval summary: accuracies with their intervals, category counts, sampling metrics."""
    rows = []
    for s in summaries:
        m, cats = s["metrics"], s.get("categorization", {})
        ci = s.get("confidence_intervals") or {}
        sampled = s.get("sampling_metrics") or {}
        disagree = s.get("grader_disagreements") or {}
        rows.append({
            "step": s["eval_step"],
            "accuracy": m.get("accuracy"),
            "accuracy_ci": format_interval(ci.get("accuracy")),
            "format_accuracy": m.get("format_accuracy"),
            "format_accuracy_ci": format_interval(ci.get("format_accuracy")),
            "correct": cats.get("correct", {}).get("count"),
            "wrong_answer": cats.get("wrong_answer", {}).get("count"),
            "format_failure": cats.get("format_failure", {}).get("count"),
            "response_length": m.get("avg_response_length"),
            "entropy": m.get("avg_token_entropy"),
            "pass_at_k": sampled.get("pass_at_k"),
            "maj_at_k": sampled.get("maj_at_k"),
            "k": sampled.get("num_samples"),
            "grader_disagreements": disagree.get("count"),
            "grader": (s.get("grading") or {}).get("reward_fn"),
        })
    return rows


def run_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """SUMMARY_COLUMNS, plus pass@k / maj@k / disagreement columns when some eval has them."""
    columns = list(SUMMARY_COLUMNS)
    ks = {r["k"] for r in rows if r.get("k")}
    k = ks.pop() if len(ks) == 1 else "k"
    for key, title in (("pass_at_k", f"pass@{k}"), ("maj_at_k", f"maj@{k}"),
                       ("grader_disagreements", "grader disagreements")):
        if any(r.get(key) is not None for r in rows):
            columns.append((key, title))
    return columns


def breakdown_rows(summary: dict, field: str) -> list[dict]:
    """One row per subject (or level) of one summary's ``by_subject`` / ``by_level``."""
    rows = []
    for name, g in (summary.get(f"by_{field}") or {}).items():
        if isinstance(g, dict):
            rows.append({field: name, "problems": g.get("problems"), "count": g.get("count"),
                         "accuracy": g.get("accuracy"), "accuracy_ci": format_interval(g.get("accuracy_ci95")),
                         "format_accuracy": g.get("format_accuracy"),
                         "format_accuracy_ci": format_interval(g.get("format_accuracy_ci95"))})
    return rows


def breakdown_columns(field: str) -> list[tuple[str, str]]:
    return [(field, field), ("problems", "problems"), ("count", "graded samples"), ("accuracy", "accuracy"),
            ("accuracy_ci", "95% CI"), ("format_accuracy", "format accuracy"), ("format_accuracy_ci", "95% CI")]


def breakdown_markdown(summary: dict) -> str:
    """The last eval by subject and by level (MATH), as markdown sections; "" when the data has neither."""
    parts = []
    for field in ("subject", "level"):
        rows = breakdown_rows(summary, field)
        if rows:
            parts.append(f"## By {field} (step {summary['eval_step']})\n\n"
                         + markdown_table(rows, breakdown_columns(field)))
    return "\n\n".join(parts)


def grader_note(summaries: list[dict]) -> str:
    """Which grader produced these numbers: they are comparable with published ones only under r1_zero."""
    graders = sorted({(s.get("grading") or {}).get("reward_fn") or "unrecorded" for s in summaries})
    return "Graded with " + ", ".join(f"`{g}`" for g in graders) + "; intervals are Wilson 95%."
