"""The registry: every grader is one RewardSpec, and everything that needs graders by name reads it from there."""

from __future__ import annotations

import dataclasses

import pytest

from hf_sft.config import EvalArguments, RecipeError
from hf_sft.grading.registry import (
    CATEGORIES,
    REWARD_FN_NAMES,
    REWARD_SPECS,
    GradeResult,
    categorize,
    failure_type,
    grade_one,
    reward_spec,
    voting_key,
)
from tests.helpers import GSM8K


WELL_FORMED = {"r1_zero": " so </think> <answer> 72 </answer>",
               "r1_zero_lenient": " so </think>\n<answer> 72 dollars </answer>",
               "question_only": r"so the total is $\boxed{72}$"}


def test_every_grader_is_exercised_here():
    assert set(WELL_FORMED) == set(REWARD_SPECS) == set(REWARD_FN_NAMES)


@pytest.mark.parametrize("name", sorted(REWARD_SPECS))
def test_each_spec_grades_votes_and_explains_failures(name):
    spec = REWARD_SPECS[name]
    assert spec.reward(WELL_FORMED[name], GSM8K, fast_path=True, cas_timeout_s=None) == {
        "format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}
    assert spec.failure_type(WELL_FORMED[name], "stop") is None
    assert spec.failure_type("", "length") == "incomplete_generation"
    assert spec.voting_key(WELL_FORMED[name]) == "72"
    assert spec.alternate is None or spec.alternate in REWARD_SPECS
    assert spec.description


def test_alternates_pair_the_two_r1_zero_graders():
    assert {n: s.alternate for n, s in REWARD_SPECS.items()} == {
        "r1_zero": "r1_zero_lenient", "r1_zero_lenient": "r1_zero", "question_only": None}


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"reward_fn must be one of \['question_only', 'r1_zero'"):
        reward_spec("r1-zero")
    with pytest.raises(ValueError):
        grade_one("x", "1", "nope")


def test_dispatch_by_name_follows_the_spec():
    separator = " so </think>\n<answer> 72 </answer>"  # strict grader: one space; lenient: any whitespace
    assert failure_type(separator, "r1_zero") == "think_answer_separator"
    assert failure_type(separator, "r1_zero_lenient") is None
    assert voting_key(separator, "r1_zero") is None and voting_key(separator, "r1_zero_lenient") == "72"
    assert voting_key(None, "question_only") is None


def test_grade_one_carries_failure_type():
    result = grade_one(" thinking without end", "72", finish_reason="length")
    assert (result.reward, result.failure_type, result.timed_out, result.error) == (0.0, "incomplete_generation",
                                                                                   False, None)
    assert grade_one(WELL_FORMED["r1_zero"], GSM8K).rewards() == {
        "format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}
    assert grade_one(WELL_FORMED["r1_zero_lenient"], GSM8K, "r1_zero_lenient", cas_timeout_s=5).reward == 1.0


@pytest.mark.parametrize("rewards,category", [((1.0, 1.0, 1.0), "correct"), ((1.0, 0.0, 0.0), "wrong_answer"),
                                              ((0.0, 0.0, 0.0), "format_failure")])
def test_categorize(rewards, category):
    assert categorize(GradeResult(*rewards)) == category and category in CATEGORIES


def test_recipe_choices_are_the_registry():
    for name in REWARD_SPECS:
        assert EvalArguments(eval_reward_fn=name).eval_reward_fn == name
    with pytest.raises(RecipeError, match="eval_reward_fn must be one of r1_zero, r1_zero_lenient, question_only"):
        EvalArguments(eval_reward_fn="lenient")
    help_text = next(f for f in dataclasses.fields(EvalArguments) if f.name == "eval_reward_fn").metadata["help"]
    assert all(name in help_text for name in REWARD_SPECS)
