"""The calculator grammar: steps recomputed exactly at the stated precision; hostile expressions refused, not run."""

from __future__ import annotations

from fractions import Fraction

import pytest

from hf_sft.grading.calculator import ANNOTATION, Unverifiable, check_annotation, evaluate, number


@pytest.mark.parametrize("body,right", [("2*3=6", True), ("2*3=7", False), ("10/3=3.33", True), ("10/3=3.3", True),
                                        ("10/3=3.4", False), ("(1+2)*-3=-9", True), ("1,200-200=1,000", True),
                                        ("0.5*40=20", True), ("7-2-1=4", True), ("8/4/2=1", True)])
def test_steps_are_recomputed_at_the_stated_precision(body, right):
    assert check_annotation(body) is right


@pytest.mark.parametrize("body", ["2**3=8", "3x4=12", "50%*10=5", "1/0=1", "=5", "2*3", "2*(3=6", "2*3=six",
                                  "9" * 300 + "=1", "(" * 30 + "1" + ")" * 30 + "=1",
                                  "*".join(["99999999"] * 20) + "=1", "__import__('os')=1"])
def test_what_is_not_plain_bounded_arithmetic_is_unverifiable(body):
    with pytest.raises(Unverifiable):
        check_annotation(body)


def test_evaluate_is_exact():
    assert evaluate("1/3+1/3+1/3") == 1


def test_numbers_and_annotations_are_read_as_written():
    assert number("1,234.5") == Fraction(2469, 2) and number("six") is None and number("1e999") is None
    assert ANNOTATION.findall("a <<2*3=6>>6 b <<6+1=7>>7") == ["2*3=6", "6+1=7"]
