"""The worker's side of the pool, run in this process: what one item's grading sends back."""

from __future__ import annotations

from hf_sft.grading.pool_worker import GradeTask, fallback, grade_task


def test_a_worker_task_grades_with_the_alternate_grader_in_process():
    """The worker's per-item function, run here: the answer the two r1_zero graders disagree on."""
    task = GradeTask(0, "r1_zero", " a </think>\n<answer> 72 </answer>", "72", "stop", True, "r1_zero_lenient")
    graded = grade_task(task, test_hooks=False)
    assert (graded.idx, graded.retire) == (0, False)
    assert (graded.result.reward, graded.result.failure_type, graded.result.alternate_reward) == (
        0.0, "think_answer_separator", 1.0)


def test_an_item_that_raised_scores_zero_keeps_its_format_verdict_and_retires_the_worker():
    task = GradeTask(3, "r1_zero", " a </think> <answer> 72 </answer>", "72", "stop", True, None)
    graded = fallback(task, timed_out=False, error="RecursionError: deep")
    assert (graded.idx, graded.retire, graded.result.reward, graded.result.format_reward) == (3, True, 0.0, 1.0)
    timed_out = fallback(task, timed_out=True, error=None)
    assert timed_out.result.timed_out and not timed_out.retire


def test_test_hooks_are_off_unless_asked():
    """A ground truth that spells a test hook is just text to a normal worker."""
    task = GradeTask(0, "r1_zero", " a </think> <answer> 1 </answer>", "__die__", "stop", True, None)
    assert grade_task(task, test_hooks=False).result.reward == 0.0
