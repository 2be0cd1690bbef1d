"""The default r1_zero grader decides as the published one (cs336 ``r1_zero_reward_fn``, ``fast=True``).

Every expected value below is the reference's decision, worked out from its code (format check, answer cut,
Hendrycks and PRM800K normalisation, sympy's ``simplify``); the comment says which rule decides.
"""

from __future__ import annotations

import pytest

from hf_sft.grading.lenient import r1_zero_lenient_reward_fn
from hf_sft.grading.pool import GradingPool
from hf_sft.grading.registry import grade_one
from hf_sft.grading.reference import format_failure_type, normalized_answer, r1_zero_reward_fn
from hf_sft.grading.reference_normalize import mathd_normalize
from hf_sft.grading.safe_expr import ParseError, parse

FORMAT_CASES = [
    # (response, format_reward, answer_reward) for ground truth "72"
    ("<think> x </think> <answer>72</answer>", 1, 1),
    (" x </think> <answer>72</answer>", 1, 1),  # the prompt ends in "<think>": the response starts inside it
    (" x </think><answer>72</answer>", 0, 0),  # no space: the literal "</think> <answer>" is missing
    (" x </think>\n<answer>72</answer>", 0, 0),  # newline (base Qwen2.5-Math often writes one)
    (" x </think>  <answer>72</answer>", 0, 0),  # two spaces
    (" x </think>\t<answer>72</answer>", 0, 0),  # tab
    (" x </think> \n<answer>72</answer>", 0, 0),
    (" x </think> so <answer>72</answer>", 0, 0),  # text between the tags
    (" x </think> <answer>72", 0, 0),  # no closing tag anywhere
    (" x <answer>72</answer>", 0, 0),  # no </think>
    (" x </think> 72 </answer>", 0, 0),  # no <answer>
    (" x </think> <answer>72</answer> and so on", 1, 0),  # text after </answer> is part of the answer
    (" x </think> <answer> 72 </answer>\n", 1, 1),  # whitespace only after it: stripped by the normaliser
    (" x </think> <answer>5</answer> <answer>72</answer>", 1, 1),  # the last <answer> wins
    (" x </think> <answer>72</answer> <answer>5</answer>", 1, 0),
    (" </answer> x </think> <answer>72", 1, 1),  # "</answer>" may be anywhere, even before
    (" x </think> <answer>72</answer></answer>", 1, 1),  # every </answer> is deleted
    (" x </think> <answer>\\boxed{72}</answer>", 1, 1),  # a box inside the answer is opened
    (" x </think> <answer>\\boxed 72</answer>", 1, 0),  # a box it cannot read: format 1, answer 0
    (" x </think> <answer>\\boxed{5} then \\boxed{72}</answer>", 1, 1),  # the last box
]


@pytest.mark.parametrize("response,fmt,ans", FORMAT_CASES)
def test_format_as_reference(response, fmt, ans):
    rewards = r1_zero_reward_fn(response, "72")
    assert (rewards["format_reward"], rewards["answer_reward"], rewards["reward"]) == (fmt, ans, ans)


ANSWER_CASES = [
    # (answer, ground truth, reference decision)
    ("72", "72", 1),
    ("72 dollars", "72", 0),  # "dollars" is no unit word of either normaliser
    ("five", "5", 0),  # no number words
    ("72 clips", "72", 0),
    ("5 apples", "5", 1),  # "apples" is one of the Hendrycks unit words
    ("72 \\text{ cm}", "72", 1),  # a trailing \text{...} is cut
    ("72.0", "72", 1),  # float("72.0") is an integer value
    ("7.2e1", "72", 1),  # Python's float reads it
    ("٧٢", "72", 1),  # float() reads any script's decimal digits
    ("72.5", "72", 0),  # an integer ground truth wants an integer answer
    ("1,000", "1000", 1),  # properly grouped thousands
    ("\\frac{1}{2}", "0.5", 1),  # 0.5 -> \frac{1}{2} in the Hendrycks normaliser
    ("1/2", "\\frac{1}{2}", 1),  # a/b -> \frac{a}{b}
    ("\\dfrac12", "\\frac{1}{2}", 1),
    ("2/4", "\\frac{1}{2}", 0),  # unreduced fractions are compared as strings
    ("\\frac{9}{3}", "3", 0),  # not an integer as written
    ("3.0", "3", 1),
    ("x = 5", "5", 1),  # a short left-hand side before "=" is dropped
    ("y = 2x + 3", "2x+3", 1),
    ("10\\%", "10", 1),
    ("90^\\circ", "90", 1),
    ("\\$18", "18", 1),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", 1),
    ("0.5\\pi", "\\frac{\\pi}{2}", 1),  # simplify(pi/2 - 0.5*pi) == 0
    ("3\\sqrt{2}", "\\sqrt{18}", 1),  # simplify
    ("x^2 + 2x + 1", "(x+1)^2", 1),  # simplify
    ("0.333", "\\frac{1}{3}", 0),
    ("\\pi", "3.14159", 0),
    ("(1, 2)", "(1,2)", 1),
    ("(2, 1)", "(1,2)", 0),
    ("[1, 2)", "[1,2)", 1),
    ("(1,2)", "[1,2]", 0),  # an interval's brackets must match
    ("\\text{(B)}", "B", 1),  # "(b)" is a one-element tuple; simplify((b)-(b)) == 0
    ("72", "\\boxed{72}", 1),  # a boxed ground truth is cut
    ("72", "Natalia sold 72 clips.\n#### 72", 1),  # so is a GSM8K solution
]


@pytest.mark.parametrize("answer,ground_truth,expected", ANSWER_CASES)
def test_answer_as_reference(answer, ground_truth, expected):
    assert r1_zero_reward_fn(f" x </think> <answer>{answer}</answer>", ground_truth)["reward"] == expected


@pytest.mark.parametrize("response,ground_truth", [
    (" x </think>\n<answer>72</answer>", "72"),
    (" x </think> <answer>72 dollars</answer>", "72"),
    (" x </think> <answer>five</answer>", "5"),
])
def test_lenient_grader_keeps_the_old_behaviour(response, ground_truth):
    assert r1_zero_lenient_reward_fn(response, ground_truth)["reward"] == 1.0
    assert r1_zero_reward_fn(response, ground_truth)["reward"] == 0.0


@pytest.mark.parametrize("response,finish,expected", [
    (" x </think> <answer>72</answer>", "stop", None),
    (" x </think>\n<answer>72</answer>", "stop", "think_answer_separator"),
    (" x </think> <answer>72", "length", "incomplete_generation"),
    (" x <answer>72</answer>", "stop", "missing_think_close"),
    (" x </think> 72", "stop", "missing_answer_open"),
    (" x </think> <answer>72", "stop", "missing_answer_close"),
])
def test_failure_types(response, finish, expected):
    assert format_failure_type(response, finish) == expected
    assert grade_one(response, "72", "r1_zero", finish).failure_type == expected


def test_normalized_answer_for_voting():
    assert normalized_answer(" x </think> <answer> \\dfrac12 </answer>") == "\\frac{1}{2}"
    assert normalized_answer(" x </think>\n<answer>1</answer>") is None
    assert mathd_normalize("\\sqrt") == "\\sqrt"  # the reference's normaliser raises there: input kept


def test_safe_expr_builds_what_parse_expr_would():
    import sympy

    x = sympy.Symbol("x")
    assert parse("2x") == 2 * x
    assert parse("sqrt(2)sqrt(8)") == 4
    assert parse("1/2x") == x / 2  # implicit multiplication binds like "*": left to right
    assert parse("-2**2") == -4
    assert parse("2^-1") == sympy.Rational(1, 2)
    assert parse("5!") == 120
    assert parse("xy") == x * sympy.Symbol("y")  # split_symbols
    assert parse("2pi") == 2 * sympy.pi


@pytest.mark.parametrize("text", ["__import__('os').system('x')", "lambda:0", "a.b", "x = 1", "2^99999999",
                                  "(9^9)^(9^9)", "(1/2)^-99999999", "100000!", "1.2.3", "x[0]", "1;2", "", "(", "1/0"])
def test_safe_expr_refuses(text):
    with pytest.raises(ParseError):
        parse(text)


def test_pool_grades_both_graders_when_asked():
    responses = [" x </think> <answer>72</answer>", " x </think>\n<answer>72</answer>",
                 " x </think> <answer>72 dollars</answer>"]
    with GradingPool(num_workers=1) as pool:
        results = pool.grade(responses, ["72"] * 3, compare=True)
        plain = pool.grade(responses, ["72"] * 3)
    assert [r.reward for r in results] == [1.0, 0.0, 0.0]
    assert [r.alternate_reward for r in results] == [1.0, 1.0, 1.0]
    assert [r.alternate_reward for r in plain] == [None, None, None]
    assert results[1].failure_type == "think_answer_separator"
