"""Canonical form of a short answer for the lenient graders, so equal answers usually become equal strings.

String rewriting only (ASCII-only regexes, no parser, no CAS): every step is linear in the answer's length.
``last_boxed`` lives here because normalising opens a ``\\boxed{}`` and extraction needs the same scan.
"""

from __future__ import annotations

import re

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


THOUSANDS_RE = re.compile(r"-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_MATHTHOUSANDS_RE = re.compile(r"(?<=[0-9]),\\!(?=[0-9]{3})")  # MATH writes 10,\!000
_BRACEDTHOUSANDS_RE = re.compile(r"(?<=\{)-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?(?=\})")
_FRAC_ARG = r"(\{[^{}]*\}|\\[a-zA-Z]+|[0-9a-zA-Z])"
_BARE_FRAC_RE = re.compile(rf"\\frac\s*{_FRAC_ARG}\s*{_FRAC_ARG}")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_THIN_SPACETHOUSANDS_RE = re.compile(r"(?<=[0-9])\\,\s*(?=[0-9]{3}(?![0-9]))")
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
    s = CONTROL_RE.sub(" ", str(text)).strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = last_boxed(s) or s
    s = _MATHTHOUSANDS_RE.sub("", s)
    s = s.replace("\\$", "").replace("\\!", "").replace("{,}", ",")
    s = s.translate(_TYPOGRAPHY)
    s = _strip_delimiters(s.strip())
    if s.count("$") == 1 and s.startswith("$"):  # currency: "$1,234"
        s = s[1:].strip()
    s = _THIN_SPACETHOUSANDS_RE.sub("", s)
    s = _SPACING_RE.sub(" ", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _BARE_FRAC_RE.sub(_brace_frac, s)
    s = _BRACEDTHOUSANDS_RE.sub(lambda m: m.group().replace(",", ""), s)
    s = _DEGREES_RE.sub("", s)
    if not keep_percent:
        s = _PERCENT_RE.sub("", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = _strip_units(s).rstrip(".").strip()
    assign = _ASSIGN_NUMBER_RE.fullmatch(s)
    if assign:
        s = assign.group(1)
    if THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s

