"""The lenient graders, ``r1_zero_lenient`` and ``question_only``: what the model meant, not the literal format.

``r1_zero`` (the default) is the published r1_zero grader's decisions, in ``hf_sft.grading.reference``; the
registry (``hf_sft.grading.registry``) names all three. Lenient pipeline for one item: extract the answer (r1_zero
tags, or the last ``\\boxed{}`` / final number), normalise both sides (``lenient_normalize``: units, degrees,
percent, ``\\$``, spacing macros, thousands commas, ``\\dfrac``...), compare the normalised strings and plain
numbers exactly, and only then ask math-verify's CAS (``lenient_equal``, which says how untrusted text is kept
from executing or running away). Extraction here is string scanning only.
"""

from __future__ import annotations

import re

from hf_sft.grading.lenient_equal import answers_equal
from hf_sft.grading.lenient_normalize import THOUSANDS_RE, last_boxed, normalize_answer

THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "</think>", "<answer>", "</answer>"
VOTE_MAX_CHARS = 512  # voting runs in the caller's process, without the pool's deadline: keep it cheap


# ---------------------------------------------------------------- extraction


def _answer_region(response: str) -> str | None:
    """Text after the first ``</think>``: the think block ends at its first close tag."""
    pos = response.find(THINK_CLOSE)
    return None if pos < 0 else response[pos + len(THINK_CLOSE):]


def extract_answer(response: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` after ``</think>``, stripped; None if none."""
    region = _answer_region(response or "")
    if region is None:
        return None
    close = region.rfind(ANSWER_CLOSE)
    open_ = region.rfind(ANSWER_OPEN, 0, max(close, 0))
    if close < 0 or open_ < 0:
        return None
    return region[open_ + len(ANSWER_OPEN):close].strip()


def format_failure_type(response: str, finish_reason: str | None = None) -> str | None:
    """Why an r1_zero response has no gradable answer block (None when it has one)."""
    response = response or ""
    if extract_answer(response) is not None:
        return None
    if finish_reason == "length":
        return "incomplete_generation"
    region = _answer_region(response)
    if region is None:
        return "missing_think_close"
    if ANSWER_OPEN not in region:
        return "missing_answer_open"
    return "missing_answer_close"



def extract_ground_truth(text: str) -> str:
    """Short answer from a GSM8K solution (``#### N``), a MATH solution (last ``\\boxed{}``) or a bare answer."""
    text = str(text)
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.replace(",", "") if THOUSANDS_RE.fullmatch(tail) else tail
    boxed = last_boxed(text) if "\\boxed" in text or "\\fbox" in text else None
    return (boxed if boxed is not None else text).strip()


_FINAL_NUMBER_RE = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?(?:/[0-9]+)?")


def extract_question_only_answer(response: str) -> str | None:
    """Last ``\\boxed{}`` content, else the final number in the text."""
    response = response or ""
    boxed = last_boxed(response) if "\\boxed" in response or "\\fbox" in response else None
    if boxed is not None:
        return boxed.strip()
    last = None
    for last in _FINAL_NUMBER_RE.finditer(response):
        pass
    return last.group().rstrip(",") if last else None



# ---------------------------------------------------------------- reward functions


def _rewards(format_ok: bool, answer_ok: bool) -> dict[str, float]:
    ok = format_ok and answer_ok
    return {"format_reward": float(format_ok), "answer_reward": float(ok), "reward": float(ok)}


def r1_zero_lenient_reward_fn(response: str, ground_truth: str, *, fast_path: bool = True,
                              cas_timeout_s: int | None = None) -> dict[str, float]:
    """Lenient rewards for the r1_zero prompt: any whitespace between ``</think>`` and ``<answer>``, the last
    complete answer block, units / number words / ``x =`` stripped, then math-verify's CAS."""
    answer = extract_answer(response)
    if answer is None:
        return _rewards(False, False)
    return _rewards(True, answers_equal(answer, extract_ground_truth(ground_truth), fast_path, cas_timeout_s))


def question_only_reward_fn(response: str, ground_truth: str, *, fast_path: bool = True,
                            cas_timeout_s: int | None = None) -> dict[str, float]:
    """Rewards for the question_only prompt: the last ``\\boxed{}``, else the final number, is the answer."""
    answer = extract_question_only_answer(response)
    if answer is None:
        return _rewards(False, False)
    return _rewards(True, answers_equal(answer, extract_ground_truth(ground_truth), fast_path, cas_timeout_s))


def question_only_failure_type(response: str, finish_reason: str | None = None) -> str | None:
    """Why a question_only response has no answer (None when it has one)."""
    if extract_question_only_answer(response or "") is not None:
        return None
    return "incomplete_generation" if finish_reason == "length" else "missing_answer"


def _voting_key(answer: str | None) -> str | None:
    if answer is None or len(answer) > VOTE_MAX_CHARS:
        return None
    return normalize_answer(answer)


def r1_zero_lenient_voting_key(response: str) -> str | None:
    """The normalised r1_zero answer, for maj@k; None when there is none (or one over ``VOTE_MAX_CHARS``)."""
    return _voting_key(extract_answer(response or ""))


def question_only_voting_key(response: str) -> str | None:
    """The normalised boxed / final-number answer, for maj@k; None when there is none."""
    return _voting_key(extract_question_only_answer(response or ""))
