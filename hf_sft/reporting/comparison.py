"""Several runs side by side: accuracy curves, final and best accuracy, by subject and level, filtered vs full.

Writes ``accuracy_curves.png``, ``final_best.png``, ``comparison.md`` and ``comparison.json`` into one
directory; a run that failed or has not evaluated yet is a row of dashes, not an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from hf_sft.evaluation.results import atomic_write_text, latest_summaries
from hf_sft.reporting import plots
from hf_sft.reporting.runs import RunRef
from hf_sft.reporting.tables import format_interval, markdown_table

COMPARISON_COLUMNS = [("run", "run"), ("size", "train examples"), ("final_step", "final step"),
                      ("final_accuracy", "final accuracy"), ("best_accuracy", "best accuracy"),
                      ("best_step", "best at step"), ("final_format_accuracy", "final format accuracy"),
                      ("final_accuracy_ci", "final accuracy 95% CI"), ("grader", "grader")]


def comparison_rows(runs: list[RunRef]) -> list[dict]:
    """One row per run: its final and best accuracy (a tie goes to the earlier step), and the final eval's
    accuracy per subject and level under ``subject:NAME`` / ``level:NAME`` keys."""
    rows = []
    for ref in runs:
        summaries = latest_summaries(ref.run_dir)
        accs = [(s["metrics"].get("accuracy"), s["eval_step"]) for s in summaries
                if s["metrics"].get("accuracy") is not None]
        best = max(accs, key=lambda a: (a[0], -a[1])) if accs else (None, None)
        final = summaries[-1] if summaries else None
        rows.append({
            "run": ref.label, "size": ref.size, "evals": len(summaries),
            "final_step": final["eval_step"] if final else None,
            "final_accuracy": final["metrics"].get("accuracy") if final else None,
            "final_format_accuracy": final["metrics"].get("format_accuracy") if final else None,
            "best_accuracy": best[0], "best_step": best[1],
            "final_accuracy_ci": format_interval((final.get("confidence_intervals") or {}).get("accuracy"))
            if final else None,
            "grader": (final.get("grading") or {}).get("reward_fn") if final else None,
            **{f"{field}:{name}": g.get("accuracy") for field in ("subject", "level")
               for name, g in ((final or {}).get(f"by_{field}") or {}).items() if isinstance(g, dict)},
        })
    return rows


def comparison_breakdown(rows: list[dict], field: str) -> str | None:
    """Final accuracy per subject (or level) across runs: one row per run, one column per value."""
    names = sorted({k.split(":", 1)[1] for r in rows for k in r if k.startswith(f"{field}:")})
    if not names:
        return None
    return markdown_table(rows, [("run", "run")] + [(f"{field}:{n}", n) for n in names])


def filtered_vs_full(rows: list[dict]) -> str | None:
    """The filtered-vs-full lines, when both runs are present (matched by label)."""
    by_label = {r["run"]: r for r in rows}
    pair = [by_label.get(name) for name in ("full", "filtered")]
    if None in pair:
        return None
    table = markdown_table(pair, [("run", "run"), ("size", "train examples"), ("final_accuracy", "final accuracy"),
                                  ("best_accuracy", "best accuracy")])
    full, filtered = pair
    if full["final_accuracy"] is not None and filtered["final_accuracy"] is not None:
        delta = filtered["final_accuracy"] - full["final_accuracy"]
        table += f"\n\nFinal accuracy, filtered minus full: {delta:+.3f}"
    return table


def build_comparison(runs: list[RunRef], out_dir, quiet: bool = False) -> Path:
    """accuracy_curves.png, final_best.png and comparison.md (+ .json) in out_dir; returns the .md path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(runs)
    plots.plot_accuracy_comparison([(r.label, latest_summaries(r.run_dir)) for r in runs],
                                   out_dir / "accuracy_curves.png")
    plots.plot_final_best(rows, out_dir / "final_best.png")
    text = "# Runs compared\n\n" + markdown_table(rows, COMPARISON_COLUMNS)
    text += "\n\n![validation accuracy](accuracy_curves.png)\n\n![final and best](final_best.png)\n"
    for field in ("subject", "level"):
        table = comparison_breakdown(rows, field)
        if table:
            text += f"\n## Final accuracy by {field}\n\n{table}\n"
    pair = filtered_vs_full(rows)
    if pair:
        text += "\n## Filtered vs full\n\n" + pair + "\n"
    runs_json = [{**row, "run_dir": str(ref.run_dir)} for row, ref in zip(rows, runs)]
    atomic_write_text(out_dir / "comparison.json", json.dumps(runs_json, indent=2) + "\n")
    atomic_write_text(out_dir / "comparison.md", text)
    if not quiet:
        print(markdown_table(rows, COMPARISON_COLUMNS))
        for field in ("subject", "level"):
            table = comparison_breakdown(rows, field)
            if table:
                print(f"\nFinal accuracy by {field}:\n{table}")
        if pair:
            print("\nFiltered vs full:\n" + pair)
        print(f"comparison: {out_dir / 'comparison.md'}")
    return out_dir / "comparison.md"
