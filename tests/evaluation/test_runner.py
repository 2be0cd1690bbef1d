"""run_evaluation's console lines: started, progress (at most one per interval), done with its interval and path."""

from __future__ import annotations

import logging

from hf_sft.evaluation.runner import EvalProblems, ThrottledProgress, done_line, run_evaluation, started_line
from hf_sft.generation.base import SamplingSettings
from hf_sft.generation.hf import HFGenerationBackend
from hf_sft.grading.pool import GradingPool


def test_progress_is_passed_on_at_most_once_per_interval():
    now, seen = [0.0], []
    progress = ThrottledProgress(lambda *report: seen.append(report), every_s=30, clock=lambda: now[0])
    for t, done in [(1, 10), (29, 20), (31, 30), (40, 40), (62, 50)]:
        now[0] = t
        progress("generated", done, 100)
    assert seen == [("generated", 30, 100), ("generated", 50, 100)]


def test_an_eval_reports_generation_and_grading_progress_and_logs_started_and_done(tmp_path, tiny_model,
                                                                                  bpe_tokenizer, caplog):
    problems = EvalProblems(prompts=[f"User: What is {a} + 7?\nAssistant: <think>" for a in range(5)],
                            problems=[f"What is {a} + 7?" for a in range(5)],
                            ground_truths=[str(a + 7) for a in range(5)], dataset="test")
    backend = HFGenerationBackend(tiny_model, bpe_tokenizer, batch_size=2, show_progress=False)
    reports, written = [], []
    with GradingPool(num_workers=1) as pool, caplog.at_level(logging.INFO, logger="hf_sft"):
        summary = run_evaluation(backend, problems, SamplingSettings(temperature=0.0, max_new_tokens=8), pool,
                                 eval_step=3, output_dir=tmp_path, model_name="tiny", on_written=written.append,
                                 progress=lambda *report: reports.append(report))
    generated = [r[1:] for r in reports if r[0] == "generated"]
    graded = [r[1:] for r in reports if r[0] == "graded"]
    assert generated == [(2, 5), (4, 5), (5, 5)]  # one report per batch of 2
    assert graded and graded[-1] == (5, 5) and all(total == 5 for _, total in graded)
    assert summary["generation"]["tokens"] > 0 and summary["generation"]["tokens_per_s"] > 0
    assert started_line(3, 5, 1) in caplog.text
    assert started_line(3, 5, 1) == "eval of step 3 started (5 problems, 1 sample each)"
    assert done_line(summary, written[0]) in caplog.text
    assert done_line(summary, written[0]).startswith("eval of step 3 done: accuracy 0.0% [0.0, ")
