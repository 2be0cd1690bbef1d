"""The graders by name: adding a reward function is one ``RewardSpec`` entry in ``REWARD_SPECS``.

Everything that needs a grader's behaviour by name (the eval loop, the pool, ``hf_sft.filter``, the recipe's
``eval_reward_fn`` choices) reads it from here, so no caller keeps its own if-chain on names. The pool
(``hf_sft.grading.pool``) imports this module; nothing in grading imports the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hf_sft.grading import lenient, reference

CATEGORIES = ("correct", "wrong_answer", "format_failure")
FAILURE_TYPES = ("missing_think_close", "missing_answer_open", "missing_answer_close", "think_answer_separator",
                 "incomplete_generation")  # the r1_zero format's failures, counted in every summary


@dataclass(frozen=True)
class RewardSpec:
    """One grader. ``reward(response, ground_truth, *, fast_path, cas_timeout_s)`` gives the three rewards;
    ``failure_type(response, finish_reason)`` says why a response has no gradable answer (None when it has one);
    ``voting_key(response)`` is the normalised answer maj@k votes on (None when there is none);
    ``alternate`` names another grader graded beside this one, so a summary can say where they disagree."""

    reward: Callable[..., dict[str, float]]
    failure_type: Callable[[str, str | None], str | None]
    voting_key: Callable[[str], str | None]
    alternate: str | None = None
    description: str = ""


def _reference_reward(response: str, ground_truth: str, *, fast_path: bool = True,
                      cas_timeout_s: int | None = None) -> dict[str, float]:
    """The reference grader has no CAS alarm to set: its parser is bounded by input size (safe_expr)."""
    return reference.r1_zero_reward_fn(response, ground_truth, fast_path=fast_path)


def _reference_voting_key(response: str) -> str | None:
    return reference.normalized_answer(response or "", max_chars=lenient.VOTE_MAX_CHARS)


REWARD_SPECS: dict[str, RewardSpec] = {
    "r1_zero": RewardSpec(
        reward=_reference_reward, failure_type=reference.format_failure_type, voting_key=_reference_voting_key,
        alternate="r1_zero_lenient", description="the published r1_zero grader's rules (strict '</think> <answer>')"),
    "r1_zero_lenient": RewardSpec(
        reward=lenient.r1_zero_lenient_reward_fn, failure_type=lenient.format_failure_type,
        voting_key=lenient.r1_zero_lenient_voting_key, alternate="r1_zero",
        description="any whitespace between the tags, units and number words forgiven, math-verify"),
    "question_only": RewardSpec(
        reward=lenient.question_only_reward_fn, failure_type=lenient.question_only_failure_type,
        voting_key=lenient.question_only_voting_key,
        description="last \\boxed{} or final number"),
}
REWARD_FN_NAMES = tuple(REWARD_SPECS)


def reward_spec(reward_fn: str) -> RewardSpec:
    try:
        return REWARD_SPECS[reward_fn]
    except KeyError:
        raise ValueError(f"reward_fn must be one of {sorted(REWARD_SPECS)}, got {reward_fn!r}") from None


@dataclass
class GradeResult:
    format_reward: float
    answer_reward: float
    reward: float
    timed_out: bool = False
    error: str | None = None
    failure_type: str | None = None
    alternate_reward: float | None = None  # the spec's alternate grader's reward, if asked

    def rewards(self) -> dict[str, float]:
        return {"format_reward": self.format_reward, "answer_reward": self.answer_reward, "reward": self.reward}


def categorize(grade) -> str:
    if grade.reward >= 1.0:
        return "correct"
    if grade.format_reward >= 1.0:
        return "wrong_answer"
    return "format_failure"


def failure_type(response: str, reward_fn: str, finish_reason: str | None = None) -> str | None:
    """Why a response has no gradable answer under ``reward_fn`` (None when it has one)."""
    return reward_spec(reward_fn).failure_type(response or "", finish_reason)


def voting_key(response: str, reward_fn: str) -> str | None:
    """The normalised answer a response gives under ``reward_fn``, for maj@k; None when it gives none."""
    return reward_spec(reward_fn).voting_key(response or "")


def grade_one(response: str, ground_truth: str, reward_fn: str = "r1_zero", finish_reason: str | None = None,
              *, fast_path: bool = True, cas_timeout_s: int | None = None) -> GradeResult:
    """Grade in-process, without a pool: for quick use and trusted input.

    Nothing bounds the time unless ``cas_timeout_s`` turns on math-verify's ``signal.alarm`` timeouts, which
    exist only on the main thread (and can leave sympy inconsistent when they fire): for untrusted input, or
    from any thread, use ``GradingPool``, whose workers call this with no alarm and enforce their own deadline.
    """
    spec = reward_spec(reward_fn)
    response, ground_truth = str(response or ""), str(ground_truth)
    return GradeResult(**spec.reward(response, ground_truth, fast_path=fast_path, cas_timeout_s=cas_timeout_s),
                       failure_type=spec.failure_type(response, finish_reason))
