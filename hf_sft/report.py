"""Reports of finished (or still running) runs, built only from what they wrote to disk.

    python -m hf_sft.report RUN_DIR [--out DIR]            # plots, summary table, report.html
    python -m hf_sft.report --compare RUN... [--out DIR]    # accuracy curves of all runs, comparison table

A run's report goes to ``RUN_DIR/report/`` (never under results/, which only the results writer
touches). In ``--compare`` a RUN is a run directory or a recipe YAML: a recipe also gives the run its
training-set size (``num_train_examples``, or the number of records of ``train_data``) and its label
(the recipe's file name), which a run directory alone does not record.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hf_sft.reporting import plots
from hf_sft.reporting.html import render_report
from hf_sft.evaluation.results import atomic_write_text

# ---------------------------------------------------------------- one run


def format_interval(interval) -> str | None:
    """``[0.241, 0.367]`` for a Wilson interval; None when the summary has none (older runs)."""
    if not interval or len(interval) != 2 or not all(isinstance(v, (int, float)) for v in interval):
        return None
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def summary_rows(summaries: list[dict]) -> list[dict]:
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


def build_run_report(run_dir, out_dir=None, quiet: bool = False) -> Path:
    """Write plots (PNG), summary.md and report.html for one run; return the report.html path."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = plots.load_summaries(run_dir)
    rows = summary_rows(summaries)
    table = markdown_table(rows, run_columns(rows)) if rows else "(no evaluation written yet)"
    last = summaries[-1] if summaries else {}
    extra = breakdown_markdown(last) if summaries else ""
    note = f"\n\n{grader_note(summaries)}" if summaries else ""
    text = f"# {run_dir.name}\n\n{table}{note}\n" + (f"\n{extra}\n" if extra else "")
    atomic_write_text(out_dir / "summary.md", text)
    plot_paths = plots.plot_run(run_dir, out_dir)
    sampling = last.get("sampling") or {}
    subtitle = " · ".join(str(x) for x in (
        run_dir.resolve(), last.get("model"), last.get("dataset"), last.get("backend"),
        ", ".join(f"{k}={v}" for k, v in sampling.items() if k in ("temperature", "top_p", "max_new_tokens")),
    ) if x)
    breakdowns = {field: breakdown_rows(last, field) for field in ("subject", "level")}
    page = render_report(f"hf-sft run {run_dir.name}", subtitle, rows, plot_paths, plots.load_records(run_dir),
                         breakdowns={f: r for f, r in breakdowns.items() if r},
                         note=grader_note(summaries) if summaries else "")
    report = out_dir / "report.html"
    atomic_write_text(report, page)
    if not quiet:
        print(f"{run_dir}:\n{table}{note}\n" + (f"{extra}\n" if extra else "") + f"report: {report}")
    return report


# ---------------------------------------------------------------- several runs


@dataclass
class RunRef:
    label: str
    run_dir: Path
    size: int | None = None


def count_train_examples(recipe: dict) -> int | None:
    """``num_train_examples``, else the record count of a local (or builtin) ``train_data`` file."""
    if recipe.get("num_train_examples"):
        return int(recipe["num_train_examples"])
    source = recipe.get("train_data")
    if not source:
        return None
    from hf_sft.data import builtin

    try:
        path = Path(builtin.resolve(source))
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except (OSError, ValueError):
        return None


def is_base_recipe(path: str) -> bool:
    """``base.yaml`` / ``base_math.yaml`` hold shared settings, not experiments (a glob picks them up)."""
    p = Path(path)
    return p.suffix in (".yaml", ".yml") and p.name.startswith("base")


def run_ref(spec: str) -> RunRef:
    """A run directory, or a recipe YAML (label = its file name, size and output_dir read from it)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from hf_sft.config import load_recipe_file

        recipe = load_recipe_file(path)
        if not recipe.get("output_dir"):
            raise ValueError(f"{path}: the recipe sets no output_dir")
        return RunRef(path.stem, Path(recipe["output_dir"]), count_train_examples(recipe))
    return RunRef(path.name, path)


def comparison_rows(runs: list[RunRef]) -> list[dict]:
    rows = []
    for ref in runs:
        summaries = plots.load_summaries(ref.run_dir)
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


COMPARISON_COLUMNS = [("run", "run"), ("size", "train examples"), ("final_step", "final step"),
                      ("final_accuracy", "final accuracy"), ("best_accuracy", "best accuracy"),
                      ("best_step", "best at step"), ("final_format_accuracy", "final format accuracy"),
                      ("final_accuracy_ci", "final accuracy 95% CI"), ("grader", "grader")]


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
    plots.plot_accuracy_comparison([(r.label, plots.load_summaries(r.run_dir)) for r in runs],
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_sft.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="a run directory (or, with --compare, run directories / recipes)")
    parser.add_argument("--compare", action="store_true", help="compare several runs")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report, or ./comparison)")
    args = parser.parse_args(argv)
    try:
        if args.compare:
            build_comparison([run_ref(r) for r in args.runs if not is_base_recipe(r)], args.out or "comparison")
        else:
            if len(args.runs) != 1:
                parser.error("one RUN_DIR at a time (or --compare)")
            build_run_report(args.runs[0], args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
