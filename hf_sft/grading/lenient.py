"""Reward functions for math answers: strings in, 0/1 rewards out. The grader knows strings, not models.

``r1_zero`` (the default) is the published r1_zero grader's decisions, in ``hf_sft.grading.reference``;
this module holds the lenient graders (``r1_zero_lenient``, ``question_only``) and their math-verify path.

Lenient pipeline for one item: extract the answer (r1_zero tags, or the last ``\\boxed{}`` / final number), normalise
both sides (units, degrees, percent, ``\\$``, spacing macros, thousands commas, ``\\dfrac``...), compare the
normalised strings and plain numbers exactly (``fractions.Fraction``), and only then ask math-verify's CAS.

Safety of model output (untrusted input)
----------------------------------------
* No ``eval``/``exec`` here, and no sympy ``parse_expr``/``sympify`` on raw strings. math-verify's expression
  path (``ExprExtractionConfig``) hands regex matches to ``sympy.parse_expr`` (which ``eval``s generated code),
  so it is never used: CAS parsing goes through ``LatexExtractionConfig`` only, i.e. the ANTLR LaTeX grammar
  of latex2sympy2_extended, which builds sympy objects node by node. The one string it passes to sympy is an
  ASCII number token (``sympy.Number("123.5")``), which its lexer restricts to ``[0-9.,E]``. We chose the
  LaTeX-only path over a whitelisted ``parse_expr`` because plain ``1/2``-style answers are valid LaTeX anyway
  and the fast path below covers plain numbers without any parser.
* The fast path parses numbers with ASCII-only regexes (``[0-9]``, never ``\\d`` or ``int()`` on unchecked
  text), so look-alike digits such as ``'٧٢'`` or fullwidth digits are not read as numbers.
* Sizes are bounded: answers over ``MAX_ANSWER_CHARS`` score 0 unparsed, and so do answers holding control
  characters (NUL...). Answers nested deeper than ``MAX_NESTING`` brackets skip the CAS (the ANTLR parser is
  exponential in depth), and parsed expressions whose value would exceed ``MAX_DIGITS`` decimal digits
  (``9^{9^{9}}``, ``99999999999!``) are refused before sympy evaluates them; only an exact normalised-string
  match can make such answers correct.
* Deadlines: ``GradingPool`` (hf_sft.grading.pool) grades in worker processes with a per-item deadline and
  kills hung workers. ``grade_one`` runs in-process with math-verify's own ``signal.alarm`` timeouts on the
  main thread and none off it. Do not use it for untrusted input: off the main thread nothing bounds it, and
  on it an alarm that interrupts sympy/mpmath can leave their caches inconsistent for later items.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from dataclasses import dataclass
from fractions import Fraction

from hf_sft.grading import reference
from hf_sft.grading.reference import r1_zero_reward_fn

MAX_ANSWER_CHARS = 2048
MAX_DIGITS = 20_000
MAX_NESTING = 10  # latex2sympy's ANTLR parser slows down steeply with bracket depth (depth 12: ~3 s)
MATH_VERIFY_TIMEOUT_S: int | None = 5  # grading_pool workers set None: they enforce their own deadline

THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "</think>", "<answer>", "</answer>"


@dataclass
class GradeResult:
    format_reward: float
    answer_reward: float
    reward: float
    timed_out: bool = False
    error: str | None = None
    failure_type: str | None = None
    alternate_reward: float | None = None  # the other r1_zero grader's reward (ALTERNATE_REWARD_FN), if asked

    def rewards(self) -> dict[str, float]:
        return {"format_reward": self.format_reward, "answer_reward": self.answer_reward, "reward": self.reward}


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


_BRACE_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\\\|\\[{}]|[{}]")


def last_boxed(text: str) -> str | None:
    """Content of the ``\\boxed{}`` that closes last, in one linear pass (escaped ``\\{ \\}`` ignored).

    One pass rather than scanning from each ``\\boxed`` keeps hostile ``\\boxed{\\boxed{...`` inputs linear.
    """
    stack: list[int | None] = []  # content start for a \boxed{ brace, None for a plain brace
    best: tuple[int, int] | None = None
    for m in _BRACE_TOKEN_RE.finditer(text):
        tok = m.group()
        if tok.endswith("{") and not tok.startswith("\\{"):
            stack.append(m.end() if tok.startswith("\\") else None)
        elif tok == "}" and stack:
            start = stack.pop()
            if start is not None:
                best = (start, m.start())
    return None if best is None else text[best[0]:best[1]]


def extract_ground_truth(text: str) -> str:
    """Short answer from a GSM8K solution (``#### N``), a MATH solution (last ``\\boxed{}``) or a bare answer."""
    text = str(text)
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.replace(",", "") if _THOUSANDS_RE.fullmatch(tail) else tail
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


# ---------------------------------------------------------------- normalisation

_THOUSANDS_RE = re.compile(r"-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_MATH_THOUSANDS_RE = re.compile(r"(?<=[0-9]),\\!(?=[0-9]{3})")  # MATH writes 10,\!000
_BRACED_THOUSANDS_RE = re.compile(r"(?<=\{)-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?(?=\})")
_FRAC_ARG = r"(\{[^{}]*\}|\\[a-zA-Z]+|[0-9a-zA-Z])"
_BARE_FRAC_RE = re.compile(rf"\\frac\s*{_FRAC_ARG}\s*{_FRAC_ARG}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_THIN_SPACE_THOUSANDS_RE = re.compile(r"(?<=[0-9])\\,\s*(?=[0-9]{3}(?![0-9]))")
_SPACING_RE = re.compile(r"(?<!\\)\\[,;: ]|\\q?quad\b|\\displaystyle\b|~")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])\s*\.?")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree\b|°")
_PERCENT_RE = re.compile(r"\\?%")
_UNITS_TEXT_RE = re.compile(r"(?:\s*\\(?:text|textbf|mbox|mathrm)\s*\{[^{}]*\}(?:\^\{?[0-9]\}?)?)+\s*$")
_WHOLE_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm)\s*\{([^{}]*)\}")
_NUMBER_WORDS_RE = re.compile(r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)\s*([A-Za-z]{2,}[A-Za-z .]*)")
_ASSIGN_NUMBER_RE = re.compile(r"[A-Za-z]\s*=\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
_MATH_WORDS = {"pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "mod", "and", "or"}
_TYPOGRAPHY = str.maketrans({"\u2212": "-", "\u2044": "/", "\u2215": "/"})  # minus, fraction/division slash
_NUMBER_NAMES = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _brace_frac(m: re.Match) -> str:
    """``\\frac12``, ``\\frac \\pi4`` -> ``\\frac{1}{2}``, ``\\frac{\\pi}{4}``: the LaTeX parser needs braces."""
    num, den = (a if a.startswith("{") else "{" + a + "}" for a in m.groups())
    return f"\\frac{num}{den}"


def _strip_delimiters(s: str) -> str:
    for left, right in _DELIMITERS:
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left):-len(right)].strip()
    return s


def _strip_units(s: str) -> str:
    """``5\\text{ cm}^2`` -> ``5``; ``\\text{5 cm}``, ``18 dollars`` -> ``5``, ``18``; ``\\mbox{four}`` -> ``4``."""
    stripped = _UNITS_TEXT_RE.sub("", s).strip()
    if stripped and stripped != s and re.search(r"[0-9]", stripped):
        s = stripped
    whole = _WHOLE_TEXT_RE.fullmatch(s)
    if whole:
        s = whole.group(1).strip()
    m = _NUMBER_WORDS_RE.fullmatch(s)
    if m and m.group(2).split()[0].lower() not in _MATH_WORDS:
        s = m.group(1)
    return _NUMBER_NAMES.get(s.lower(), s)


def normalize_answer(text: str, keep_percent: bool = False) -> str:
    """Canonical LaTeX-ish form of a short answer, so equal answers usually become equal strings.

    ``keep_percent`` keeps ``\\%`` for the CAS, which then accepts both ``10`` and ``0.1`` for ``10\\%``.
    """
    s = _CONTROL_RE.sub(" ", str(text)).strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = last_boxed(s) or s
    s = _MATH_THOUSANDS_RE.sub("", s)
    s = s.replace("\\$", "").replace("\\!", "").replace("{,}", ",")
    s = s.translate(_TYPOGRAPHY)
    s = _strip_delimiters(s.strip())
    if s.count("$") == 1 and s.startswith("$"):  # currency: "$1,234"
        s = s[1:].strip()
    s = _THIN_SPACE_THOUSANDS_RE.sub("", s)
    s = _SPACING_RE.sub(" ", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _BARE_FRAC_RE.sub(_brace_frac, s)
    s = _BRACED_THOUSANDS_RE.sub(lambda m: m.group().replace(",", ""), s)
    s = _DEGREES_RE.sub("", s)
    if not keep_percent:
        s = _PERCENT_RE.sub("", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = _strip_units(s).rstrip(".").strip()
    assign = _ASSIGN_NUMBER_RE.fullmatch(s)
    if assign:
        s = assign.group(1)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s


# ---------------------------------------------------------------- equivalence

_DECIMAL_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_INTEGER_RE = re.compile(r"-?[0-9]+")
_FRACTION_RES = (
    re.compile(r"(-?)\\frac\{(-?[0-9]+)\}\{(-?[0-9]+)\}"),
    re.compile(r"(-?)([0-9]+)/([0-9]+)"),
)


def _as_number(s: str) -> Fraction | None:
    """Exact value of a plain ASCII number or numeric fraction; None for anything else (or too long)."""
    if len(s) > 64:
        return None
    if _DECIMAL_RE.fullmatch(s):
        return Fraction(s)
    for pattern in _FRACTION_RES:
        m = pattern.fullmatch(s)
        if m and int(m.group(3)) != 0:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
    return None


def _fast_equal(gold: str, pred: str) -> bool | None:
    """Decide cheaply when possible: True/False, or None to ask the CAS."""
    if gold.replace(" ", "") == pred.replace(" ", ""):
        return bool(gold)
    g, p = _as_number(gold), _as_number(pred)
    if g is None or p is None:
        return None
    if g == p:
        return True
    if _INTEGER_RE.fullmatch(gold) and _INTEGER_RE.fullmatch(pred):
        return False
    return None  # decimals: the CAS applies math-verify's rounding tolerance


def _digits(node, depth: int = 0) -> float:
    """Upper estimate of the decimal digits of a parsed expression's value (symbols count as 1 digit).

    Lets ``_too_big`` refuse power towers and huge factorials before sympy tries to evaluate them.
    """
    from sympy import Basic, Float, MatrixBase, Pow, Rational

    if depth > 200:
        return math.inf
    if isinstance(node, MatrixBase):
        return max((_digits(x, depth + 1) for x in node), default=0.0)
    if not isinstance(node, Basic):
        return 0.0
    if isinstance(node, Rational):
        return 0.302 * (int(node.p).bit_length() + int(node.q).bit_length()) + 1
    if isinstance(node, Float):
        _, _, exp, bits = node._mpf_
        return 0.302 * abs(exp + bits) + 1
    if not node.args:
        return 1.0
    if isinstance(node, Pow):
        base, exp = node.args
        return _digits(base, depth + 1) * _magnitude(exp, depth + 1) + 1
    kind = type(node).__name__
    if kind in _FACTORIAL_LIKE:
        n = max(_magnitude(a, depth + 1) for a in node.args)
        return n * math.log10(n + 2) + 1
    if kind == "exp":
        return 0.4343 * _magnitude(node.args[0], depth + 1) + 1
    if kind in ("Sum", "Product"):  # as many terms as the largest bound: conservative, never evaluated
        n = max(_magnitude(b, depth + 1) for limit in node.limits for b in limit[1:])
        return n * (_digits(node.args[0], depth + 1) + 1)
    return sum(_digits(a, depth + 1) for a in node.args) + 1


def _magnitude(node, depth: int) -> float:
    """Upper bound on ``|value|`` (exponents, factorial arguments)."""
    from sympy import Rational

    if isinstance(node, Rational):
        return abs(int(node.p)) / int(node.q) if int(node.p).bit_length() < 1000 else math.inf
    digits = _digits(node, depth)
    return 10.0**digits if digits < 300 else math.inf


_FACTORIAL_LIKE = {"factorial", "factorial2", "subfactorial", "binomial", "gamma", "RisingFactorial",
                   "FallingFactorial", "fibonacci", "lucas", "catalan", "bell", "bernoulli", "harmonic"}


def _has_infinity(parsed) -> bool:
    from sympy import Basic, MatrixBase, S

    special = (S.Infinity, S.NegativeInfinity, S.ComplexInfinity, S.NaN)
    for x in parsed:
        if isinstance(x, MatrixBase) and any(e.has(*special) for e in x):
            return True
        if isinstance(x, Basic) and x.has(*special):
            return True
    return False


def _too_big(parsed) -> bool:
    try:
        return any(_digits(x) > MAX_DIGITS for x in parsed)
    except RecursionError:
        return True


def _mv_timeout() -> int | None:
    """math-verify's alarm-based timeout only works on the main thread; elsewhere it must be off."""
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _cas_parse(latex: str) -> tuple:
    """math-verify parse via the LaTeX grammar only (never ExprExtractionConfig: it calls parse_expr)."""
    from math_verify import LatexExtractionConfig, parse

    wrapped = latex if any(d in latex for d in ("$", "\\(", "\\[", "\\boxed")) else f"${latex}$"
    return tuple(parse(wrapped, extraction_config=[LatexExtractionConfig()], parsing_timeout=_mv_timeout()))


def _nesting_depth(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(depth - 1, 0)
    return deepest


def _cas_equal(gold: str, pred: str) -> bool:
    from math_verify import verify

    if any(len(s) > MAX_ANSWER_CHARS or _nesting_depth(s) > MAX_NESTING for s in (gold, pred)):
        return False
    g, p = _cas_parse(gold), _cas_parse(pred)
    if not g or not p or _too_big(g) or _too_big(p):
        return False
    if _has_infinity(p) and not _has_infinity(g):
        return False  # sympy's simplify(72 - oo**oo) is 0 under some hash seeds: infinities only match infinities
    return bool(verify(list(g), list(p), timeout_seconds=_mv_timeout()))


def answers_equal(pred: str, gold: str, fast_path: bool = True) -> bool:
    """Is ``pred`` mathematically equal to ``gold`` (both short answers)? Oversized answers are never parsed."""
    if not pred or len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS or _CONTROL_RE.search(pred):
        return False  # control characters (NUL...) never belong to a real answer: no cleaning them into one
    if fast_path:
        quick = _fast_equal(normalize_answer(gold), normalize_answer(pred))
        if quick is not None:
            return quick
    return _cas_equal(normalize_answer(gold, keep_percent=True), normalize_answer(pred, keep_percent=True))


# ---------------------------------------------------------------- reward functions


def _rewards(format_ok: bool, answer_ok: bool) -> dict[str, float]:
    ok = format_ok and answer_ok
    return {"format_reward": float(format_ok), "answer_reward": float(ok), "reward": float(ok)}


def r1_zero_lenient_reward_fn(response: str, ground_truth: str, *, fast_path: bool = True) -> dict[str, float]:
    """Lenient rewards for the r1_zero prompt: any whitespace between ``</think>`` and ``<answer>``, the last
    complete answer block, units / number words / ``x =`` stripped, then math-verify's CAS."""
    answer = extract_answer(response)
    if answer is None:
        return _rewards(False, False)
    return _rewards(True, answers_equal(answer, extract_ground_truth(ground_truth), fast_path))


def question_only_reward_fn(response: str, ground_truth: str, *, fast_path: bool = True) -> dict[str, float]:
    """Rewards for the question_only prompt: the last ``\\boxed{}``, else the final number, is the answer."""
    answer = extract_question_only_answer(response)
    if answer is None:
        return _rewards(False, False)
    return _rewards(True, answers_equal(answer, extract_ground_truth(ground_truth), fast_path))


# r1_zero: the published grader's decisions (hf_sft.grading.reference); r1_zero_lenient: ours, more forgiving.
REWARD_FNS = {"r1_zero": r1_zero_reward_fn, "r1_zero_lenient": r1_zero_lenient_reward_fn,
              "question_only": question_only_reward_fn}
# The other r1_zero grader, graded beside the chosen one so a summary can say where they disagree.
ALTERNATE_REWARD_FN = {"r1_zero": "r1_zero_lenient", "r1_zero_lenient": "r1_zero"}


def failure_type(response: str, reward_fn: str, finish_reason: str | None = None) -> str | None:
    """Why a response has no gradable answer under ``reward_fn`` (None when it has one)."""
    if reward_fn == "r1_zero":
        return reference.format_failure_type(response, finish_reason)
    if reward_fn == "r1_zero_lenient":
        return format_failure_type(response, finish_reason)
    if extract_question_only_answer(response) is not None:
        return None
    return "incomplete_generation" if finish_reason == "length" else "missing_answer"


VOTE_MAX_CHARS = 512  # voting runs in the caller's process, without the pool's deadline: keep it cheap


def voting_key(response: str, reward_fn: str) -> str | None:
    """The normalised answer a response gives under ``reward_fn``, for maj@k; None when it gives none
    (or one over ``VOTE_MAX_CHARS``, which no real answer is)."""
    if reward_fn == "r1_zero":
        return reference.normalized_answer(response or "", max_chars=VOTE_MAX_CHARS)
    answer = extract_answer(response or "") if reward_fn == "r1_zero_lenient" else extract_question_only_answer(
        response or "")
    if answer is None or len(answer) > VOTE_MAX_CHARS:
        return None
    return normalize_answer(answer)


def grade_one(response: str, ground_truth: str, reward_fn: str = "r1_zero", finish_reason: str | None = None,
              *, fast_path: bool = True) -> GradeResult:
    """Grade in-process, without a pool: for quick use and trusted input.

    No deadline beyond math-verify's own ``signal.alarm`` timeouts, which only exist on the main thread (and
    can leave sympy inconsistent when they fire): for untrusted input, or from any thread, use ``GradingPool``.
    """
    fn = REWARD_FNS[reward_fn]
    response, ground_truth = str(response or ""), str(ground_truth)
    return GradeResult(**fn(response, ground_truth, fast_path=fast_path),
                       failure_type=failure_type(response, reward_fn, finish_reason))


def __getattr__(name: str):
    """``from hf_sft.grading.lenient import GradingPool`` without importing multiprocessing machinery eagerly."""
    if name == "GradingPool":
        from hf_sft.grading.pool import GradingPool

        return GradingPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
