"""The lenient graders: the equivalence table, answer extraction, format failures, question_only."""

from __future__ import annotations

import pytest

from hf_sft.grading.lenient import (
    extract_answer,
    extract_ground_truth,
    extract_question_only_answer,
    format_failure_type,
    question_only_failure_type,
    question_only_reward_fn,
    question_only_voting_key,
    r1_zero_lenient_reward_fn,
    r1_zero_lenient_voting_key,
)
from hf_sft.grading.pool import GradingPool
from tests.helpers import GSM8K, r1


OK, WRONG, BAD_FORMAT = (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0)
MATH_SOLUTION = r"The probability is $\frac{4}{36}$, which simplifies to $\boxed{\frac{1}{9}}$."

TABLE = [
    # GSM8K ground truths
    (r1("72"), GSM8K, OK),
    (r1("71"), GSM8K, WRONG),
    (r1("72.00"), GSM8K, OK),
    (r1("7.2"), GSM8K, WRONG),
    (r1(r"\boxed{72}"), GSM8K, OK),
    (r1("72 clips"), GSM8K, OK),
    (r1("$72"), GSM8K, OK),
    (r1("1,234"), "#### 1234", OK),
    (r1("1234"), "#### 1,234", OK),
    (r1("$1,234"), "#### 1234", OK),
    (r1("1,235"), "#### 1,234", WRONG),
    (r1("-5"), "#### -5", OK),
    (r1("5"), "#### -5", WRONG),
    (r1("18"), "#### 18", OK),
    (r1(r"\$18.00"), "#### 18", OK),
    # fractions, decimals
    (r1(r"\frac{1}{2}"), "0.5", OK),
    (r1("0.5"), r"\frac{1}{2}", OK),
    (r1("1/2"), r"\frac{1}{2}", OK),
    (r1(r"\dfrac12"), r"\frac{1}{2}", OK),
    (r1(r"\tfrac{1}{2}"), r"\dfrac{1}{2}", OK),
    (r1(r"\frac{2}{4}"), r"\frac{1}{2}", OK),
    (r1("0.33"), r"\frac{1}{3}", WRONG),
    (r1("1/3"), "0.33", WRONG),
    (r1("-0.5"), r"-\frac{1}{2}", OK),
    (r1(r"\frac{-1}{2}"), r"-\frac12", OK),
    (r1("1.5"), r"\frac{3}{2}", OK),
    (r1("1.50"), "1.5", OK),
    (r1("2.5"), r"\frac{5}{3}", WRONG),
    (r1(r"$\frac{3}{4}$"), r"\frac34", OK),
    (r1(r"\frac{1}{9}"), MATH_SOLUTION, OK),
    (r1(r"\frac{1}{8}"), MATH_SOLUTION, WRONG),
    # tuples, intervals, sets
    (r1("(1,2)"), "(1,2)", OK),
    (r1("(2,1)"), "(1,2)", WRONG),
    (r1("(1, 2)"), r"\left( 1, 2 \right)", OK),
    (r1("[1,2]"), "[1,2)", WRONG),
    (r1("[1, 2)"), "[1,2)", OK),
    (r1(r"(-\infty, 3]"), r"(-\infty,3]", OK),
    (r1(r"(-\infty, 3)"), r"(-\infty,3]", WRONG),
    (r1("2, 1"), "1, 2", OK),
    # units, degrees, percent, text
    (r1("10"), r"10\%", OK),
    (r1(r"10\%"), "10", OK),
    (r1("90"), r"90^\circ", OK),
    (r1(r"90^{\circ}"), "90", OK),
    (r1("91"), r"90^\circ", WRONG),
    (r1("5"), r"\text{5 cm}", OK),
    (r1(r"5\text{ cm}"), "5", OK),
    (r1("100"), r"100\text{ square units}", OK),
    (r1(r"\text{Evelyn}"), r"\text{Evelyn}", OK),
    (r1(r"\text{(C)}"), r"\text{(C)}", OK),
    (r1("4:30 p.m."), r"\text{4:30 p.m.}", OK),
    (r1("10000"), r"10,\!000", OK),
    (r1("10,000"), "10000", OK),
    (r1(r"1\,000"), "1000", OK),
    # assignments
    (r1("x=3"), "3", OK),
    (r1("3"), "x = 3", OK),
    (r1("x=4"), "3", WRONG),
    # matrices and vectors
    (r1(r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"), r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", OK),
    (r1(r"\begin{pmatrix} 1 & 2 \\ 3 & 5 \end{pmatrix}"), r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", WRONG),
    (r1(r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}"), r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", WRONG),
    # radicals, pi, expressions
    (r1(r"2\sqrt{2}"), r"\sqrt{8}", OK),
    (r1(r"\sqrt{8}"), r"2\sqrt{3}", WRONG),
    (r1(r"\frac{\sqrt{3}}{2}"), r"\frac{\sqrt3}2", OK),
    (r1(r"\frac{\sqrt2}{2}"), r"We get $\boxed{\frac{\sqrt{2}}{2}}$.", OK),
    (r1(r"2\pi"), r"\pi", WRONG),
    (r1(r"\pi"), r"\pi", OK),
    (r1("x^2+2x+1"), "(x+1)^2", OK),
    (r1(r"\infty"), r"\infty", OK),
    (r1(r"\frac{1}{0}"), "0", WRONG),
    # malformed formats
    (" reasoning <answer> 72 </answer>", "72", BAD_FORMAT),  # no </think>
    (" reasoning </think> 72", "72", BAD_FORMAT),  # no <answer>
    (" reasoning </think> <answer> 72", "72", BAD_FORMAT),  # unclosed answer
    (" reasoning </think> 72 </answer>", "72", BAD_FORMAT),  # close without open
    (" <answer> 72 </answer> reasoning </think>", "72", BAD_FORMAT),  # answer before think close
    (" reasoning </think> <answer>  </answer>", "72", WRONG),  # empty answer: tags complete, nothing to grade
    (" reasoning </think> <answer> 71 </answer> <answer> 72 </answer>", "72", OK),  # last complete block
    (" reasoning </think><answer>72</answer>", "72", OK),  # no spaces needed
    ("", "72", BAD_FORMAT),
]


@pytest.mark.parametrize("response,ground_truth,expected", TABLE)
def test_r1_zero_table(response, ground_truth, expected):
    rewards = r1_zero_lenient_reward_fn(response, ground_truth)
    assert (rewards["format_reward"], rewards["answer_reward"], rewards["reward"]) == expected


def test_table_is_large_enough():
    assert len(TABLE) >= 60


def test_pool_agrees_with_in_process_grading(pool):
    results = pool.grade([t[0] for t in TABLE], [t[1] for t in TABLE], reward_fn="r1_zero_lenient")
    got = [(r.format_reward, r.answer_reward, r.reward) for r in results]
    assert got == [t[2] for t in TABLE]
    assert not any(r.timed_out or r.error for r in results)


def test_fast_path_and_cas_agree_on_the_table():
    """The fast path may only shortcut what the CAS would decide the same way."""
    for response, ground_truth, expected in TABLE:
        rewards = r1_zero_lenient_reward_fn(response, ground_truth, fast_path=False)
        assert rewards["reward"] == expected[2], (response, ground_truth)


@pytest.fixture(scope="module")
def pool():
    with GradingPool(num_workers=2) as p:
        yield p


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize("response,answer", [
    (r1("72"), "72"),
    (" a </think> <answer>1</answer> <answer>2</answer>", "2"),
    (" a </think> <answer>1</answer> <answer>2", "1"),
    (" a </think> b </think> <answer>3</answer>", "3"),
    (" a </think> <answer></answer>", ""),
    (" a <answer>1</answer> </think>", None),
    (" a </think> <answer>1", None),
    ("no tags at all", None),
])
def test_extract_answer(response, answer):
    assert extract_answer(response) == answer


@pytest.mark.parametrize("response,finish_reason,failure", [
    (r1("72"), "stop", None),
    (r1("72"), "length", None),
    (" still thinking", "length", "incomplete_generation"),
    (" done </think> <answer> 7", "length", "incomplete_generation"),
    (" no close tag <answer> 72 </answer>", "stop", "missing_think_close"),
    (" closed </think> 72", "stop", "missing_answer_open"),
    (" closed </think> 72 </answer>", "stop", "missing_answer_open"),
    (" <answer> 72 </answer> </think>", "stop", "missing_answer_open"),
    (" closed </think> <answer> 72", "stop", "missing_answer_close"),
    (" closed </think> <answer> 72", None, "missing_answer_close"),
])
def test_format_failure_type(response, finish_reason, failure):
    assert format_failure_type(response, finish_reason) == failure


@pytest.mark.parametrize("text,answer", [
    (GSM8K, "72"),
    ("so 1,234 in all.\n#### 1,234", "1234"),
    ("#### -3", "-3"),
    (MATH_SOLUTION, r"\frac{1}{9}"),
    (r"First $\boxed{1}$, then $\boxed{\left\{ \frac{a}{b} \right\}}$.", r"\left\{ \frac{a}{b} \right\}"),
    (r"\fbox{x^{2}}", "x^{2}"),
    (r"\boxed{\text{(A)}}", r"\text{(A)}"),
    (r" \dfrac{1}{9} ", r"\dfrac{1}{9}"),
    ("(1,2)", "(1,2)"),
])
def test_extract_ground_truth(text, answer):
    assert extract_ground_truth(text) == answer


@pytest.mark.parametrize("response,ground_truth,expected", [
    (r"So the area is $\boxed{\frac{1}{2}}$.", "0.5", OK),
    (r"Maybe \boxed{3}, no: \boxed{4}.", "4", OK),
    (r"Maybe \boxed{3}, no: \boxed{4}.", "3", WRONG),
    ("Adding up, the total is 1,234.", "#### 1234", OK),
    ("She has 3/4 of it left", r"\frac{3}{4}", OK),
    ("The answer is 12. Then 13", "12", WRONG),
    ("no number here at all", "12", BAD_FORMAT),
    (r"unclosed \boxed{12", "12", OK),  # falls back to the final number
])
def test_question_only_reward_fn(response, ground_truth, expected):
    rewards = question_only_reward_fn(response, ground_truth)
    assert (rewards["format_reward"], rewards["answer_reward"], rewards["reward"]) == expected
    assert (extract_question_only_answer(response) is None) == (expected == BAD_FORMAT)


@pytest.mark.parametrize("response,finish_reason,failure", [
    (r"so \boxed{5}", "stop", None),
    ("the total is 12", None, None),
    ("I think", "length", "incomplete_generation"),
    ("no number here", "stop", "missing_answer"),
])
def test_question_only_failure_type(response, finish_reason, failure):
    assert question_only_failure_type(response, finish_reason) == failure


def test_voting_keys_are_normalised_answers_and_bounded():
    half = r"\frac{1}{2}"
    assert r1_zero_lenient_voting_key(r1(r"\dfrac{1}{2}")) == r1_zero_lenient_voting_key(r1(r"\frac12")) == half
    assert r1_zero_lenient_voting_key("no tags") is None
    assert r1_zero_lenient_voting_key(r1("9" * 600)) is None  # over VOTE_MAX_CHARS: no real answer is that long
    assert question_only_voting_key(r"so \boxed{1,234}") == question_only_voting_key("in all 1234") == "1234"
    assert question_only_voting_key(None) is None
