"""The two normalisations of the published r1_zero grader, as decisions on strings (see ``reference``).

(a) Hendrycks MATH (``mathd_normalize``): string rewriting, then the reference compares for equality.
(b) PRM800K (``prm_normalize`` + ``prm_equal``): rewriting (LaTeX read to text by pylatexenc), tuples and
intervals compared element by element, integers only with integers, unreduced fractions as strings, and the
rest by ``simplify(gt - given) == 0`` on an expression ``safe_expr`` builds (never ``parse_expr``).
Python's ``float`` is used where the reference uses it: it parses numbers, it evaluates nothing.
"""

from __future__ import annotations

import logging
import re

from hf_sft.grading.safe_expr import ParseError, parse as safe_parse

logging.getLogger("pylatexenc").setLevel(logging.ERROR)  # it warns on every malformed \frac it reads

# ---------------------------------------------------------------- (a) Hendrycks MATH normalisation

# Words the reference deletes when they stand alone (between non-word characters), in this order, twice
# over; each is a regular expression (``.`` matches anything), then the same list with "s" appended.
_UNIT_WORDS = (
    "east|degree|mph|kmph|ft|m sqaure| m east|sq m|deg|mile|q .|monkey|prime|ratio|profit of rs|rd|o|gm|p . m|"
    "lb|tile|per|dm|lt|gain|ab|way|west|a .|b .|c .|d .|e .|f .|g .|h .|t|a|h|no change|men|soldier|pie|bc|"
    "excess|st|inches|noon|percent|by|gal|kmh|c|acre|rise|a . m|th|π r 2|sq|mark|l|toy|coin|sq . m|gallon|"
    "° f|profit|minw|yr|women|feet|am|pm|hr|cu cm|square|v â € ™|are|rupee|rounds|cubic|cc|mtr|s|ohm|number|"
    "kmph|day|hour|minute|min|second|man|woman|sec|cube|mt|sq inch|mp|∏ cm ³|hectare|more|sec|unit|cu . m|"
    "cm 2|rs .|rs|kg|g|month|km|m|cm|mm|apple|liter|loss|yard|pure|year|increase|decrease|d|less|Surface|"
    "litre|pi sq m|s .|metre|meter|inch"
)
_UNITS = _UNIT_WORDS.split("|")
_UNITS += [u + "s" for u in _UNITS]
_UNIT_RES = [re.compile(r"(^|\W)" + u + r"($|\W)") for u in _UNITS]
_MAY_HOLD_UNIT = re.compile(r"[A-Za-z]|[^\x00-\x7f]")
_WHOLE_TEXT = re.compile(r"^\\text\{(?P<text>.+?)\}$")
_TRAILING_TEXT = re.compile(r"\\text{.*?}$")
_CANONICAL_INT = r"(?:0|-?[1-9][0-9]*)"
_INT_SLASH_INT = re.compile(rf"{_CANONICAL_INT}/{_CANONICAL_INT}")


class _Unchanged(Exception):
    """The reference's normaliser raised: it then returns its input (stripped, ``\\text{}`` removed)."""


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    head, *parts = s.split("\\sqrt")
    for part in parts:
        if not part:
            raise _Unchanged  # "\sqrt" at the very end: the reference indexes past it
        head += "\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return head


def _fix_fracs(s: str) -> str:
    head, *parts = s.split("\\frac")
    for part in parts:
        head += "\\frac"
        if not part:
            raise _Unchanged
        if part[0] == "{":
            head += part
        elif len(part) < 2:
            return s  # "\fracx": the whole string is left as it was
        elif part[1] != "{":
            head += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            head += "{" + part[0] + "}" + part[1:]
    return head


def _strip_string(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "")
    cut = _TRAILING_TEXT.sub("", s).strip()
    if cut and cut != s:
        s = cut
    for _ in range(2 if _MAY_HOLD_UNIT.search(s) else 0):  # every unit word has a letter or non-ASCII char
        for pattern in _UNIT_RES:
            cut = pattern.sub(r"\1\2", s)
            if cut:
                s = cut
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:
        pieces = s.split("\\text{ ")
        if len(pieces) != 2:
            raise _Unchanged
        s = pieces[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _fix_fracs(_fix_sqrt(s).replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    if _INT_SLASH_INT.fullmatch(s):
        a, b = s.split("/")
        s = "\\frac{" + a + "}{" + b + "}"
    return s


def mathd_normalize(answer: str) -> str:
    answer = answer.strip()
    m = _WHOLE_TEXT.search(answer)
    if m:
        answer = m.group("text").strip()
    try:
        return _strip_string(answer)
    except _Unchanged:
        return answer


# ---------------------------------------------------------------- (b) PRM800K normalisation + CAS

_PRM_UNITS = ("degree cm centimeter meter mile second minute hour day week month year foot feet inch yard").split()
_PRM_UNIT_RES = [re.compile(f"{u}(es)?(s)? *(\\^[0-9]+)?") for u in _PRM_UNITS]
_COMMA_GROUP = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_MIXED_NUMBER = re.compile(r"([0-9]) +([0-9])")
_FRAC_LIKE = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")
_LATEX_SYMBOLS = {"√": "sqrt", "π": "pi", "∞": "inf", "∪": "U", "·": "*", "×": "*"}
_TUPLE_CHARS = "()[]"


def _float(s: str) -> float | None:
    """Python's ``float`` (no eval: a number parser), as the reference uses it; None when it refuses."""
    try:
        return float(s)
    except (ValueError, OverflowError):
        return None


def _is_int_value(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (ValueError, OverflowError):  # nan, inf
        return False


def _strip_commas(s: str) -> str:
    while True:
        out = _COMMA_GROUP.sub(r"\1\3\4", s)
        if out == s:
            return out
        s = out


def _str_is_int(s: str) -> bool:
    x = _float(_strip_commas(s))
    return x is not None and _is_int_value(x)


def _latex_to_text(s: str) -> str:
    from pylatexenc import latex2text  # a LaTeX parser that builds nodes; it evaluates nothing

    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    s = latex2text.LatexNodes2Text().latex_to_text(s)
    for symbol, name in _LATEX_SYMBOLS.items():
        s = s.replace(symbol, name)
    return s.strip()


def prm_normalize(expr: str) -> str:
    m = _WHOLE_TEXT.search(expr)
    if m:
        expr = m.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for pattern in _PRM_UNIT_RES:
        expr = pattern.sub("", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    x = _float(expr)
    if x is not None and _is_int_value(x):
        expr = str(int(round(x)))
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:  # the reference keeps the string when its LaTeX reader fails
            pass
    expr = re.sub("- *", "-", expr)
    expr = _MIXED_NUMBER.sub(r"\1+\2", expr)
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(expr):
        expr = str(int(_float(expr.replace(",", "")) or 0))
    return expr


def _split_tuple(expr: str) -> list[str]:
    expr = _strip_commas(expr)
    if not expr:
        return []
    if (len(expr) > 2 and expr[0] in _TUPLE_CHARS and expr[-1] in _TUPLE_CHARS
            and not any(ch in expr[1:-1] for ch in _TUPLE_CHARS)):
        return [e.strip() for e in expr[1:-1].split(",")]
    return [expr]


def _allow_cas(expr: str) -> bool:
    """The reference's ``should_allow_eval``: at most two distinct letters, no ``^{``/``^(``, small exponents."""
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2 or "^{" in expr or "^(" in expr:
        return False
    return not (re.search(r"\^[0-9]+\^", expr) or re.search(r"\^[0-9][0-9]+", expr))


def _cas_equal(gt: str, given: str) -> bool:
    expr = f"({gt})-({given})"
    if not _allow_cas(expr):
        return False
    try:
        diff = safe_parse(expr)
    except ParseError:
        return False
    import sympy

    try:
        return bool(sympy.simplify(diff) == 0)
    except Exception:  # the reference swallows every sympy failure as "not equal"
        return False


def prm_equal(given: str, gt: str) -> bool:
    gt_n, given_n = prm_normalize(gt), prm_normalize(given)
    if gt_n == given_n:
        return True
    if not given_n:
        return False
    gt_elems, given_elems = _split_tuple(gt_n), _split_tuple(given_n)
    if len(gt_elems) > 1 and (gt_n[0] != given_n[0] or gt_n[-1] != given_n[-1]):
        return False
    if len(gt_elems) != len(given_elems):
        return False
    for g, p in zip(gt_elems, given_elems):
        if _FRAC_LIKE.search(g) and _FRAC_LIKE.search(p):
            ok = g == p  # unreduced fractions are not simplified into each other
        elif _str_is_int(g) != _str_is_int(p):
            ok = False  # an integer ground truth wants an integer answer
        else:
            ok = _cas_equal(g, p)
        if not ok:
            return False
    return True
