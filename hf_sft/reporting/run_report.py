"""One run's report, from what it wrote to disk: plots, ``summary.md`` and ``report.html`` in ``RUN_DIR/report/``.

Never under results/, which only the results writer touches. A run may still be training or have been
killed: the report shows whatever evaluations are complete at that moment.
"""

from __future__ import annotations

from pathlib import Path

from hf_sft.evaluation.results import atomic_write_text, latest_summaries, read_eval_records
from hf_sft.reporting.html import render_report
from hf_sft.reporting.tables import breakdown_markdown, breakdown_rows, grader_note, markdown_table, run_columns, \
    summary_rows


def build_run_report(run_dir, out_dir=None, quiet: bool = False) -> Path:
    """Write plots (PNG), summary.md and report.html for one run; return the report.html path."""
    from hf_sft.reporting import plots  # matplotlib (~0.6 s) only once there is a report: train.py imports this

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = latest_summaries(run_dir)
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
    page = render_report(f"hf-sft run {run_dir.name}", subtitle, rows, plot_paths, read_eval_records(run_dir),
                         breakdowns={f: r for f, r in breakdowns.items() if r},
                         note=grader_note(summaries) if summaries else "")
    report = out_dir / "report.html"
    atomic_write_text(report, page)
    if not quiet:
        print(f"{run_dir}:\n{table}{note}\n" + (f"{extra}\n" if extra else "") + f"report: {report}")
    return report
