"""Is a predicted short answer equal to the gold one? Exact fast path first, then math-verify's CAS, bounded.

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
* Deadlines: ``cas_timeout_s`` turns on math-verify's own ``signal.alarm`` timeouts, which exist only on the
  main thread and can leave sympy/mpmath caches inconsistent when they fire. The default is None (no alarm):
  ``GradingPool`` (hf_sft.grading.pool) grades untrusted input in worker processes with its own per-item
  deadline and kills hung workers instead.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from fractions import Fraction

from hf_sft.grading.lenient_normalize import CONTROL_RE, normalize_answer

MAX_ANSWER_CHARS = 2048
MAX_DIGITS = 20_000
MAX_NESTING = 10  # latex2sympy's ANTLR parser slows down steeply with bracket depth (depth 12: ~3 s)


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


def _alarm(cas_timeout_s: int | None) -> int | None:
    """math-verify's alarm-based timeout only works on the main thread; elsewhere it must be off."""
    return cas_timeout_s if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def cas_parse(latex: str, cas_timeout_s: int | None = None) -> tuple:
    """math-verify parse via the LaTeX grammar only (never ExprExtractionConfig: it calls parse_expr)."""
    from math_verify import LatexExtractionConfig, parse

    wrapped = latex if any(d in latex for d in ("$", "\\(", "\\[", "\\boxed")) else f"${latex}$"
    return tuple(parse(wrapped, extraction_config=[LatexExtractionConfig()], parsing_timeout=_alarm(cas_timeout_s)))


def _nesting_depth(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(depth - 1, 0)
    return deepest


def _cas_equal(gold: str, pred: str, cas_timeout_s: int | None) -> bool:
    from math_verify import verify

    if any(len(s) > MAX_ANSWER_CHARS or _nesting_depth(s) > MAX_NESTING for s in (gold, pred)):
        return False
    g, p = cas_parse(gold, cas_timeout_s), cas_parse(pred, cas_timeout_s)
    if not g or not p or _too_big(g) or _too_big(p):
        return False
    if _has_infinity(p) and not _has_infinity(g):
        return False  # sympy's simplify(72 - oo**oo) is 0 under some hash seeds: infinities only match infinities
    return bool(verify(list(g), list(p), timeout_seconds=_alarm(cas_timeout_s)))


def answers_equal(pred: str, gold: str, fast_path: bool = True, cas_timeout_s: int | None = None) -> bool:
    """Is ``pred`` mathematically equal to ``gold`` (both short answers)? Oversized answers are never parsed."""
    if not pred or len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS or CONTROL_RE.search(pred):
        return False  # control characters (NUL...) never belong to a real answer: no cleaning them into one
    if fast_path:
        quick = _fast_equal(normalize_answer(gold), normalize_answer(pred))
        if quick is not None:
            return quick
    return _cas_equal(normalize_answer(gold, keep_percent=True), normalize_answer(pred, keep_percent=True),
                      cas_timeout_s)
