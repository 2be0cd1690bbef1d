"""One run's report (summary.md, report.html, plots) from result files written by the project's results writer;
the full report of a run with evals is checked through the command, in tests/test_report.py."""

from __future__ import annotations

from hf_sft.reporting.run_report import build_run_report


def test_report_of_a_run_with_nothing_evaluated_yet(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    page = build_run_report(run, quiet=True).read_text()
    assert "No evaluation has been written yet" in page and "No per-example logs yet" in page
    assert not list((run / "report").glob("*.png"))
