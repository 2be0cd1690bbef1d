"""Summary statistics: Wilson intervals, pass@k / maj@k, subject / level breakdowns, grader disagreements,
and the summary of a real (tiny, random) model's k-sample evaluation through the grading pool."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from hf_sft.evaluation.stats import breakdown, disagreements, pass_at_k, sampling_stats, wilson_interval
from hf_sft.evaluation.runner import EvalProblems, run_evaluation, summary_to_metrics
from hf_sft.generation.base import SamplingSettings
from hf_sft.generation.hf import HFGenerationBackend
from hf_sft.grading.pool import GradingPool
from hf_sft.evaluation.results import eval_logs_dir


def test_wilson_interval_known_values():
    assert wilson_interval(6, 200) == [0.0138, 0.0639]  # 3% of 200: not 3% +- 2.4%
    assert wilson_interval(0, 200) == [0.0, 0.0188]  # never below 0 ...
    assert wilson_interval(200, 200) == [0.9812, 1.0]  # ... nor above 1
    assert wilson_interval(142, 5000) == [0.0241, 0.0334]  # the published 2.84% on MATH's 5,000
    assert wilson_interval(0, 0) is None


@pytest.mark.parametrize("n,c,k", [(4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 0, 2), (6, 6, 6), (3, 1, 3)])
def test_pass_at_k_is_the_chance_that_k_of_n_samples_hold_a_correct_one(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def rec(i: int, problem: int, correct: bool, vote: str | None, subject: str = "Algebra", level: str = "Level 1",
        alternate: float | None = None) -> dict:
    return {"index": i, "problem_index": problem, "category": "correct" if correct else "wrong_answer",
            "rewards": {"format_reward": float(vote is not None)}, "vote": vote, "subject": subject, "level": level,
            "grading": {"alternate": None if alternate is None else {"reward_fn": "r1_zero_lenient",
                                                                     "reward": alternate}},
            "grader_disagreement": alternate is not None and alternate != float(correct)}


def test_maj_at_k_follows_the_most_frequent_answer():
    records = [  # problem 0: the majority (2 of 3) is wrong although one sample is right
        rec(0, 0, True, "5"), rec(1, 0, False, "6"), rec(2, 0, False, "6"),
        # problem 1: the majority is right; problem 2: no sample gives an answer
        rec(3, 1, True, "1"), rec(4, 1, True, "1"), rec(5, 1, False, "2"),
        rec(6, 2, False, None), rec(7, 2, False, None), rec(8, 2, False, None),
    ]
    stats = sampling_stats(records, 3)
    assert stats["pass_at_k"] == pytest.approx(round(2 / 3, 4))
    assert stats["maj_at_k"] == pytest.approx(round(1 / 3, 4))
    assert stats["problems"] == 3 and stats["num_samples"] == 3
    assert sampling_stats(records, 1) is None


def test_breakdowns_and_disagreements():
    records = [rec(0, 0, True, "1", "Algebra", "Level 1", alternate=1.0),
               rec(1, 1, False, "2", "Algebra", "Level 2", alternate=1.0),
               rec(2, 2, False, None, "Geometry", "Level 2", alternate=0.0)]
    by_subject = breakdown(records, "subject")
    assert by_subject["Algebra"]["count"] == 2 and by_subject["Algebra"]["accuracy"] == 0.5
    assert by_subject["Algebra"]["accuracy_ci95"] == wilson_interval(1, 2)
    assert by_subject["Geometry"]["format_accuracy"] == 0.0
    assert set(breakdown(records, "level")) == {"Level 1", "Level 2"}
    assert breakdown([{k: v for k, v in r.items() if k != "subject"} for r in records], "subject") is None
    d = disagreements(records)
    assert (d["count"], d["indices"], d["correct_only_there"], d["other_reward_fn"]) == (1, [1], 1, "r1_zero_lenient")


def test_k_samples_from_a_real_model_summarised_with_breakdowns(tmp_path, tiny_model, bpe_tokenizer):
    problems = EvalProblems(
        prompts=[f"User: What is {a} + 7?\nAssistant: <think>" for a in range(4)],
        problems=[f"What is {a} + 7?" for a in range(4)], ground_truths=[str(a + 7) for a in range(4)],
        dataset="test", subjects=["Algebra", "Algebra", "Number Theory", None],
        levels=["Level 1", "Level 2", "Level 2", None])
    backend = HFGenerationBackend(tiny_model, bpe_tokenizer, batch_size=8, show_progress=False)
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=12, num_samples=3)
    with GradingPool(num_workers=1) as pool:
        summary = run_evaluation(backend, problems, sampling, pool, eval_step=0, output_dir=tmp_path,
                                 model_name="tiny")
    [log] = eval_logs_dir(tmp_path).glob("eval_step_0_*.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 12 and [r["problem_index"] for r in records] == [p for p in range(4) for _ in range(3)]
    assert len({r["response"] for r in records[:3]}) > 1, "the k samples of a problem should differ"
    assert summary["total_examples"] == 12
    assert summary["sampling"]["num_samples"] == 3
    assert summary["sampling_metrics"]["problems"] == 4
    assert summary["by_subject"]["Algebra"]["count"] == 6 and summary["by_subject"]["Algebra"]["problems"] == 2
    assert set(summary["by_level"]) == {"Level 1", "Level 2"}
    assert summary["confidence_intervals"]["accuracy"] == wilson_interval(
        sum(r["category"] == "correct" for r in records), 12)
    assert summary["grader_disagreements"]["compared"] == 12
    assert summary["grader_disagreements"]["count"] == sum(r["grader_disagreement"] for r in records)
    metrics = summary_to_metrics(summary)
    assert "eval/subject/number_theory/accuracy" in metrics and "eval/level/level_2/format_accuracy" in metrics
    assert {"eval/pass_at_k", "eval/maj_at_k", "eval/accuracy_ci_low", "eval/grader_disagreements"} <= set(metrics)
    assert all(isinstance(v, (int, float)) for v in metrics.values())
