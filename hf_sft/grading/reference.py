"""The published r1_zero grader's decisions, reproduced without eval: strings in, 0/1 rewards out.

CS336 and the DrGRPO paper report Qwen2.5-Math-1.5B numbers with ``r1_zero_reward_fn`` of
stanford-cs336/assignment5-alignment (``cs336_alignment/drgrpo_grader.py``, itself from
sail-sg/understand-r1-zero), called with its default ``fast=True``. This module is our own code for the
same decisions, read from that grader as facts (the normalisations are in ``reference_normalize``):

* format: the response must contain the literal ``"</think> <answer>"`` (one space) and ``"</answer>"``
  somewhere; nothing else is checked.
* answer: everything after the last ``<answer>`` with every ``</answer>`` deleted (text after the closing
  tag included, nothing stripped). If it holds ``\\boxed``, the last ``\\boxed{...}`` is the answer, and a
  box it cannot read scores 0 with format 1. A ground truth holding ``\\boxed`` or ``####`` is cut the same way.
* equality: correct if (a) the Hendrycks MATH normalisation (its ``mathd_normalize_answer``) makes both
  strings equal, or (b) the PRM800K normalisation (its ``_normalize``) makes them equal, or, element by
  element of a tuple or interval, unreduced numeric fractions match as strings, an integer is only equal
  to an integer, and otherwise ``simplify(gt - given) == 0``.
* answers over ``MAX_CHARS`` score 0 unread (the reference would read them; no real answer is that long).

Where we cannot be exact, safely: the reference hands (b)'s strings to sympy's ``parse_expr`` (Python
``eval``). We never do: ``safe_expr.parse`` builds the sympy expression node by node from a small grammar
(numbers, letters as symbols, ``sqrt``/``pi``/``ln``/``oo``, ``+ - * / ^ !``, brackets, implicit
multiplication), refuses anything else (the reference would often refuse it too: its parse fails or its
``should_allow_eval`` says no), and ``simplify`` runs under the grading pool's deadline. Known differences:
two-letter sympy names other than ``pi``/``ln``/``oo`` (``re``, ``im``, ``li``, ``ff``, ``rf``, ``nan``, ``zoo``)
read as products of symbols here; Python-only syntax (``lambda``, attribute access, ``%``...) is refused
here where ``parse_expr`` might accept it. ``tests/grading/test_reference.py`` lists the decisions checked.
"""

from __future__ import annotations

from hf_sft.grading.reference_normalize import mathd_normalize, prm_equal

THINK_ANSWER = "</think> <answer>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
MAX_CHARS = 4096  # longer answers are never normalised or parsed (the reference would try, slowly)

# ---------------------------------------------------------------- format and extraction


def has_format(response: str) -> bool:
    """The reference's format check: two literal substrings, nothing more."""
    return THINK_ANSWER in response and ANSWER_CLOSE in response


def answer_text(response: str) -> str:
    """Everything after the last ``<answer>``, every ``</answer>`` removed, nothing stripped."""
    return response.split(ANSWER_OPEN)[-1].replace(ANSWER_CLOSE, "")


def format_failure_type(response: str, finish_reason: str | None = None) -> str | None:
    """Why the strict format check fails (None when it passes); the separator case is its own type."""
    if has_format(response):
        return None
    if finish_reason == "length":
        return "incomplete_generation"
    if "</think>" not in response:
        return "missing_think_close"
    if ANSWER_OPEN not in response:
        return "missing_answer_open"
    if ANSWER_CLOSE not in response:
        return "missing_answer_close"
    return "think_answer_separator"  # both tags there, but not as "</think> <answer>"


def last_boxed_only(text: str) -> str | None:
    """From the last ``\\boxed`` (else ``\\fbox``) to the ``}`` that balances the braces counted from there."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def boxed_content(text: str) -> str | None:
    """Content of that box when it reads ``\\boxed{...}``; None otherwise (``\\fbox``, ``\\boxed 5``, unbalanced)."""
    box = last_boxed_only(text)
    if box is None or not box.startswith("\\boxed{") or not box.endswith("}"):
        return None
    return box[len("\\boxed{"):-1]


def cut_answer(text: str) -> str | None:
    """The reference's ``extract_answer``: a box, else what follows the last ``####``, else None."""
    if "\\boxed" in text:
        return boxed_content(text)
    if "####" in text:
        return text.split("####")[-1].strip()
    return None


def grade(given: str, ground_truth: str) -> bool:
    """The reference's ``grade(given, gt, fast=True)``."""
    if "\\boxed" in ground_truth or "####" in ground_truth:
        cut = cut_answer(ground_truth)
        if cut is None:
            return False
        ground_truth = cut
    if len(given) > MAX_CHARS or len(ground_truth) > MAX_CHARS:
        return False
    return mathd_normalize(given) == mathd_normalize(ground_truth) or prm_equal(given, ground_truth)


def r1_zero_reward_fn(response: str, ground_truth: str, *, fast_path: bool = True) -> dict[str, float]:
    """Rewards exactly as the published r1_zero grader decides them (``fast_path`` is accepted, unused)."""
    if not has_format(response):
        return {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
    answer = answer_text(response)
    if "\\boxed" in answer:
        answer = cut_answer(answer)
    ok = answer is not None and grade(answer, str(ground_truth))
    return {"format_reward": 1.0, "answer_reward": float(ok), "reward": float(ok)}


def normalized_answer(response: str, max_chars: int = MAX_CHARS) -> str | None:
    """The answer a response gives, normalised (for majority voting); None when the format check fails."""
    if not has_format(response):
        return None
    answer = answer_text(response)
    if "\\boxed" in answer:
        answer = cut_answer(answer)
    return None if answer is None or len(answer) > max_chars else mathd_normalize(answer)
