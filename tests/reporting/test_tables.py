"""Rows and markdown tables of eval summaries: what an older summary lacks shows as a dash, never as an error."""

from __future__ import annotations

from hf_sft.reporting.tables import SUMMARY_COLUMNS, breakdown_markdown, format_interval, markdown_table, \
    run_columns, summary_rows


def test_intervals_and_cells_of_missing_values():
    assert format_interval([0.2412, 0.3671]) == "[0.241, 0.367]"
    assert format_interval(None) is None and format_interval([0.1]) is None and format_interval(["a", 1]) is None
    table = markdown_table([{"a": 0.5, "b": None, "c": 3}], [("a", "A"), ("b", "B"), ("c", "C")])
    assert table.splitlines() == ["| A | B | C |", "|---:|---:|---:|", "| 0.500 | – | 3 |"]


def test_a_summary_of_an_older_run_has_the_base_columns_only():
    old = {"eval_step": 5, "metrics": {"accuracy": 0.25}}  # no intervals, categories, sampling or grader
    [row] = summary_rows([old])
    assert row["accuracy"] == 0.25 and row["accuracy_ci"] is None and row["grader"] is None
    assert run_columns([row]) == SUMMARY_COLUMNS
    assert breakdown_markdown(old) == ""


def test_sampling_columns_name_their_k():
    sampled = {"pass_at_k": 0.5, "maj_at_k": 0.25, "num_samples": 4}
    rows = summary_rows([{"eval_step": 0, "metrics": {}, "sampling_metrics": sampled,
                          "grader_disagreements": {"count": 2}}])
    titles = [title for _, title in run_columns(rows)]
    assert titles[-3:] == ["pass@4", "maj@4", "grader disagreements"]
