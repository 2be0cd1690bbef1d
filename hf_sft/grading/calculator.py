"""GSM8K's ``<<expr=value>>`` calculator annotations, checked with exact fractions by a small grammar.

The expressions come from a data file (untrusted): they are parsed by a grammar of numbers, ``+ - * /`` and
brackets, never evaluated as code, and long, deeply nested or huge ones are refused, so every parse is bounded.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

ANNOTATION = re.compile(r"<<([^<>]*)>>")
TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+|[-+*/()])")
MAX_CHARS, MAX_DEPTH, MAX_DIGITS = 200, 20, 40


class Unverifiable(ValueError):
    """Not plain arithmetic (or too big to check): neither right nor wrong."""


def _tokens(expr: str) -> list[str]:
    expr = expr.replace(",", "")
    out, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = TOKEN.match(expr, pos)
        if not m:
            raise Unverifiable(f"not arithmetic at {expr[pos:pos + 10]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def evaluate(expr: str) -> Fraction:
    """Exact value of ``expr`` (numbers, + - * /, brackets, unary minus); Unverifiable otherwise."""
    if len(expr) > MAX_CHARS:
        raise Unverifiable("expression too long")
    toks, i = _tokens(expr), 0

    def peek():
        return toks[i] if i < len(toks) else None

    def take():
        nonlocal i
        i += 1
        return toks[i - 1]

    def atom(depth):
        if depth > MAX_DEPTH:
            raise Unverifiable("nested too deeply")
        t = take() if peek() is not None else None
        if t == "(":
            value = sum_(depth + 1)
            if peek() != ")":
                raise Unverifiable("unbalanced brackets")
            take()
            return value
        if t == "-":
            return -atom(depth + 1)
        if t is None or t in "+*/)":
            raise Unverifiable("operand expected")
        return Fraction(t)

    def product(depth):
        value = atom(depth)
        while peek() in ("*", "/"):
            op, rhs = take(), atom(depth)
            if op == "/" and rhs == 0:
                raise Unverifiable("division by zero")
            value = value * rhs if op == "*" else value / rhs
            if abs(value.numerator) > 10 ** MAX_DIGITS or value.denominator > 10 ** MAX_DIGITS:
                raise Unverifiable("numbers too big")
        return value

    def sum_(depth):
        value = product(depth)
        while peek() in ("+", "-"):
            op, rhs = take(), product(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    value = sum_(0)
    if peek() is not None:
        raise Unverifiable(f"unexpected {peek()!r}")
    return value


def check_annotation(body: str) -> bool:
    """True if ``expr=value`` computes to value (at the precision value is written with)."""
    expr, sep, stated = body.rpartition("=")
    if not sep:
        raise Unverifiable("no '='")
    try:
        stated_dec = Decimal(stated.strip().replace(",", ""))
    except InvalidOperation as err:
        raise Unverifiable(f"stated value {stated!r} is not a number") from err
    if not stated_dec.is_finite() or abs(stated_dec.adjusted()) > MAX_DIGITS:
        raise Unverifiable("stated value out of range")
    value = evaluate(expr)
    decimals = max(0, -stated_dec.as_tuple().exponent)
    step = Fraction(1, 10 ** decimals)
    # Right if stated lies within half a unit of its last written digit (10/3=3.33 is right, 3.3 too, 3.4 not).
    return abs(value - Fraction(stated_dec)) <= step / 2


def number(text: str) -> Fraction | None:
    """Exact value of a written number (``1,234.5``); None when it is not one or is out of range."""
    try:
        value = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        return None
    return Fraction(value) if value.is_finite() and abs(value.adjusted()) <= MAX_DIGITS else None
