"""Answer equivalence under hostile input: nothing executes, nothing runs away, nothing wrong scores."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from hf_sft.grading.lenient import r1_zero_lenient_reward_fn
from hf_sft.grading.lenient_equal import MAX_ANSWER_CHARS, answers_equal
from hf_sft.grading.pool import GradingPool
from tests.helpers import r1


def hostile_answers(canary) -> list[str]:
    touch = f"touch {canary}"
    return [
        f"import os; os.system('{touch}')",
        f"__import__('os').system('{touch}')",
        f"eval(\"__import__('os').system('{touch}')\")",
        f"exec(\"open('{canary}', 'w').write('x')\")",
        f"(lambda: __import__('subprocess').run(['touch', '{canary}']))()",
        f"$__import__('os').system('{touch}')$",
        rf"\boxed{{__import__('os').system('{touch}')}}",
        f"1 + __import__('os').system('{touch}')",
        "{0.__class__.__init__.__globals__}",
        "{0.__class__}",
        "%s%s%s%n",
        "{{7*7}}",
        r"\input{/etc/passwd}",
        rf"\immediate\write18{{{touch}}}",
        r"\def\x{\x}\x",
        "9^9^9^9",
        "10^{10^{10^{10}}}",
        "2^{2^{100}}",
        "99999999999!",
        r"\binom{10^{10}}{5 \cdot 10^{9}}",
        r"\prod_{i=1}^{10^{9}} i",
        "1e999999999",
        r"\infty^{\infty}",
        r"e^{e^{e^{e^{e}}}}",
        "{" * 5000 + "72" + "}" * 5000,
        "{" * 12 + "7" + "}" * 12,
        r"\frac{" * 40 + "1" + "}{2}" * 40,
        "\x00" * 64,
        "7\x002",
        "72\x00",
        "\u0667\u0662",  # Arabic-Indic 7 2
        "\uff17\uff12",  # fullwidth 7 2
        "\U0001d7d5\U0001d7d0",  # mathematical bold 7 2
        "7\u200b2",  # zero-width space
        "\u202e27",  # right-to-left override
        "⁷²",
        "9" * 100_000,
        "7" + " " * 100_000 + "2",
    ]


def test_hostile_answers_in_process(tmp_path):
    """On the main thread, with cas_timeout_s, math-verify's alarms bound parsing; nothing executes or scores."""
    canary = tmp_path / "CANARY"
    for answer in hostile_answers(canary):
        start = time.perf_counter()
        rewards = r1_zero_lenient_reward_fn(r1(answer), "72", cas_timeout_s=5)
        assert time.perf_counter() - start < 12, answer[:50]
        assert rewards["reward"] == 0.0, answer[:50]
    assert not canary.exists()


def test_hostile_answers_through_pool(tmp_path):
    canary = tmp_path / "CANARY"
    answers = hostile_answers(canary)
    with GradingPool(timeout=3.0) as pool:
        start = time.perf_counter()
        results = pool.grade([r1(a) for a in answers], ["72"] * len(answers), reward_fn="r1_zero_lenient")
        elapsed = time.perf_counter() - start
    assert all(r.reward == 0.0 and r.format_reward == 1.0 for r in results)
    assert elapsed < 3.0 * len(answers) / 2 + 10
    assert not canary.exists()


def test_infinity_never_equals_a_finite_truth():
    """sympy's ``simplify(72 - oo**oo)`` is 0 under some hash seeds (4 is one): a reward hack if let through."""
    code = ("from hf_sft.grading.lenient_equal import answers_equal; "
            "print(answers_equal(r'\\infty^{\\infty}', '72'), answers_equal(r'\\infty', r'\\infty'))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "4"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]


def test_oversized_answer_is_refused_quickly():
    start = time.perf_counter()
    assert r1_zero_lenient_reward_fn(r1("1" * (MAX_ANSWER_CHARS + 1)), "1" * (MAX_ANSWER_CHARS + 1))["reward"] == 0.0
    assert r1_zero_lenient_reward_fn(r1("x" * 100_000), "72")["reward"] == 0.0
    assert time.perf_counter() - start < 0.5


def test_fast_path_never_needs_the_cas_for_plain_numbers():
    assert answers_equal("0.50", "1/2") and answers_equal("72", "72.0")
    assert not answers_equal("71", "72") and not answers_equal("", "72")
