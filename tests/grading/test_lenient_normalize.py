"""Answer normalisation and the linear boxed scan."""

from __future__ import annotations

import time

import pytest

from hf_sft.grading.lenient_normalize import last_boxed, normalize_answer


def test_last_boxed_is_linear_on_deep_or_unclosed_nesting():
    start = time.perf_counter()
    assert last_boxed(r"\boxed{" * 50_000) is None
    assert last_boxed(r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}") == "{" * 5000 + "1" + "}" * 5000
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("raw,normal", [
    (r"$\dfrac{1}{2}$", r"\frac{1}{2}"),
    (r"\left( 1,\! 2 \right)", "( 1, 2 )"),
    (r"5\text{ cm}^2", "5"),
    (r"\$1,234.50", "1234.50"),
    (r"45^\circ", "45"),
    (r"12.5\%", "12.5"),
    (r"\boxed{x = 7}", "7"),
    (r"\text{Sunday}", "Sunday"),
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal
