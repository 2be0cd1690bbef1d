"""A small arithmetic parser that builds sympy expressions node by node: never ``eval``, never ``sympify``.

It stands in for ``sympy.parse_expr(s.replace("^", "**"), standard_transformations +
implicit_multiplication_application)`` on the short, already-normalised answers of the reference grader
(``reference``): ASCII numbers (``Float`` for decimals, as ``parse_expr`` makes them), single letters as
symbols (a run of letters that is not a known name splits into letters, as ``split_symbols`` does), ``pi``,
``oo``, ``sqrt``, ``ln``, ``+ - * / ^ **``, postfix ``!``, parentheses, and implicit multiplication at the
level of ``*`` (``2x``, ``2(3)``, ``sqrt(2)sqrt(3)``). Anything else raises ``ParseError``. Powers and
factorials whose value would be huge are refused before sympy computes them.
"""

from __future__ import annotations

import math
import re

MAX_CHARS = 512
MAX_DIGITS = 20_000
_TOKEN_RE = re.compile(r"\s*(?:(?P<num>[0-9]+\.?[0-9]*(?:e[+-]?[0-9]+)?|\.[0-9]+(?:e[+-]?[0-9]+)?)"
                       r"|(?P<name>[a-z]+)|(?P<op>\*\*|[-+*/^()!]))")
_FUNCTIONS = ("sqrt", "ln")
_CONSTANTS = ("pi", "oo")


class ParseError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise ParseError(f"unexpected {text[pos]!r} at {pos}")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "num" and out and out[-1][0] == "num":
            raise ParseError(f"two numbers in a row at {pos}")  # "1.2.3": a syntax error for parse_expr too
        if kind == "name" and value not in _FUNCTIONS + _CONSTANTS:
            out += [("name", c) for c in value]  # split_symbols: "xy" is x*y
        else:
            out.append((kind, "**" if value == "^" else value))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        import sympy

        self.sp = sympy
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise ParseError(f"expected {value or 'more input'}")
        self.i += 1
        return tok

    def parse(self):
        node = self.expr()
        if self.peek() is not None:
            raise ParseError(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self):
        node = self.term()
        while self.peek() and self.peek()[1] in "+-":
            op = self.take()[1]
            rhs = self.term()
            node = node + rhs if op == "+" else node - rhs
        return node

    def _starts_atom(self) -> bool:
        tok = self.peek()
        return tok is not None and (tok[0] in ("num", "name") or tok[1] == "(")

    def term(self):
        node = self.unary()
        while True:
            tok = self.peek()
            if tok and tok[1] in ("*", "/"):
                self.take()
                rhs = self.unary()
                if tok[1] == "/":
                    if rhs == 0:
                        raise ParseError("division by zero")
                    node = node / rhs
                else:
                    node = node * rhs
            elif self._starts_atom():
                node = node * self.unary()  # implicit multiplication
            else:
                return node

    def unary(self):
        tok = self.peek()
        if tok and tok[1] in "+-":
            self.take()
            operand = self.unary()
            return -operand if tok[1] == "-" else operand
        return self.power()

    def power(self):
        base = self.postfix()
        if self.peek() and self.peek()[1] == "**":
            self.take()
            exponent = self.unary()
            _check_power(base, exponent)
            return base**exponent
        return base

    def postfix(self):
        node = self.atom()
        while self.peek() and self.peek()[1] == "!":
            self.take()
            if not (node.is_Integer and 0 <= int(node) <= 1000):
                raise ParseError("factorial of a large or non-integer value")
            node = self.sp.factorial(node)
        return node

    def atom(self):
        kind, value = self.take()
        sp = self.sp
        if kind == "num":
            return sp.Integer(value) if value.isdigit() else sp.Float(value)
        if value == "(":
            node = self.expr()
            self.take(")")
            return node
        if kind != "name":
            raise ParseError(f"unexpected {value!r}")
        if value == "pi":
            return sp.pi
        if value == "oo":
            return sp.oo
        if value in _FUNCTIONS:
            fn = sp.sqrt if value == "sqrt" else sp.log
            if self.peek() and self.peek()[1] == "(":
                self.take("(")
                arg = self.expr()
                self.take(")")
            else:
                arg = self.postfix()  # implicit application: "sqrt 2"
            return fn(arg)
        return sp.Symbol(value)


def _check_power(base, exponent) -> None:
    """Refuse exact powers whose value would have more than ``MAX_DIGITS`` digits (``(1/2)^{-10^9}`` too)."""
    if not exponent.is_Number:
        return
    e = abs(float(exponent)) if exponent.is_finite else math.inf
    if base.is_Rational and base != 0:
        biggest = max(abs(int(base.p)), abs(int(base.q)))
        if biggest > 1 and e * math.log10(biggest) > MAX_DIGITS:
            raise ParseError("power too large")
    elif not base.is_Number and e > 10_000:
        raise ParseError("exponent too large")


def parse(text: str):
    """The sympy expression ``text`` denotes, or ``ParseError``."""
    if len(text) > MAX_CHARS:
        raise ParseError("too long")
    return _Parser(text).parse()
