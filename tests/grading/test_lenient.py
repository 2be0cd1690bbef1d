"""The grader: equivalence table, formats, helpers, hostile answers, and the deadline pool."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from hf_sft.grading.lenient import (
    MAX_ANSWER_CHARS,
    GradingPool,
    extract_answer,
    extract_ground_truth,
    extract_question_only_answer,
    format_failure_type,
    grade_one,
    last_boxed,
    normalize_answer,
    question_only_reward_fn,
    r1_zero_lenient_reward_fn,
)


def r1(answer: str) -> str:
    """A response continuing the r1_zero prompt (which ends in ``Assistant: <think>``)."""
    return f" Let me work it out step by step. </think> <answer> {answer} </answer>"


OK, WRONG, BAD_FORMAT = (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0)
GSM8K = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 72"
MATH_SOLUTION = r"The probability is $\frac{4}{36}$, which simplifies to $\boxed{\frac{1}{9}}$."

TABLE = [
    # GSM8K ground truths
    (r1("72"), GSM8K, OK),
    (r1("71"), GSM8K, WRONG),
    (r1("72.00"), GSM8K, OK),
    (r1("7.2"), GSM8K, WRONG),
    (r1(r"\boxed{72}"), GSM8K, OK),
    (r1("72 clips"), GSM8K, OK),
    (r1("$72"), GSM8K, OK),
    (r1("1,234"), "#### 1234", OK),
    (r1("1234"), "#### 1,234", OK),
    (r1("$1,234"), "#### 1234", OK),
    (r1("1,235"), "#### 1,234", WRONG),
    (r1("-5"), "#### -5", OK),
    (r1("5"), "#### -5", WRONG),
    (r1("18"), "#### 18", OK),
    (r1(r"\$18.00"), "#### 18", OK),
    # fractions, decimals
    (r1(r"\frac{1}{2}"), "0.5", OK),
    (r1("0.5"), r"\frac{1}{2}", OK),
    (r1("1/2"), r"\frac{1}{2}", OK),
    (r1(r"\dfrac12"), r"\frac{1}{2}", OK),
    (r1(r"\tfrac{1}{2}"), r"\dfrac{1}{2}", OK),
    (r1(r"\frac{2}{4}"), r"\frac{1}{2}", OK),
    (r1("0.33"), r"\frac{1}{3}", WRONG),
    (r1("1/3"), "0.33", WRONG),
    (r1("-0.5"), r"-\frac{1}{2}", OK),
    (r1(r"\frac{-1}{2}"), r"-\frac12", OK),
    (r1("1.5"), r"\frac{3}{2}", OK),
    (r1("1.50"), "1.5", OK),
    (r1("2.5"), r"\frac{5}{3}", WRONG),
    (r1(r"$\frac{3}{4}$"), r"\frac34", OK),
    (r1(r"\frac{1}{9}"), MATH_SOLUTION, OK),
    (r1(r"\frac{1}{8}"), MATH_SOLUTION, WRONG),
    # tuples, intervals, sets
    (r1("(1,2)"), "(1,2)", OK),
    (r1("(2,1)"), "(1,2)", WRONG),
    (r1("(1, 2)"), r"\left( 1, 2 \right)", OK),
    (r1("[1,2]"), "[1,2)", WRONG),
    (r1("[1, 2)"), "[1,2)", OK),
    (r1(r"(-\infty, 3]"), r"(-\infty,3]", OK),
    (r1(r"(-\infty, 3)"), r"(-\infty,3]", WRONG),
    (r1("2, 1"), "1, 2", OK),
    # units, degrees, percent, text
    (r1("10"), r"10\%", OK),
    (r1(r"10\%"), "10", OK),
    (r1("90"), r"90^\circ", OK),
    (r1(r"90^{\circ}"), "90", OK),
    (r1("91"), r"90^\circ", WRONG),
    (r1("5"), r"\text{5 cm}", OK),
    (r1(r"5\text{ cm}"), "5", OK),
    (r1("100"), r"100\text{ square units}", OK),
    (r1(r"\text{Evelyn}"), r"\text{Evelyn}", OK),
    (r1(r"\text{(C)}"), r"\text{(C)}", OK),
    (r1("4:30 p.m."), r"\text{4:30 p.m.}", OK),
    (r1("10000"), r"10,\!000", OK),
    (r1("10,000"), "10000", OK),
    (r1(r"1\,000"), "1000", OK),
    # assignments
    (r1("x=3"), "3", OK),
    (r1("3"), "x = 3", OK),
    (r1("x=4"), "3", WRONG),
    # matrices and vectors
    (r1(r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"), r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", OK),
    (r1(r"\begin{pmatrix} 1 & 2 \\ 3 & 5 \end{pmatrix}"), r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", WRONG),
    (r1(r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}"), r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", WRONG),
    # radicals, pi, expressions
    (r1(r"2\sqrt{2}"), r"\sqrt{8}", OK),
    (r1(r"\sqrt{8}"), r"2\sqrt{3}", WRONG),
    (r1(r"\frac{\sqrt{3}}{2}"), r"\frac{\sqrt3}2", OK),
    (r1(r"\frac{\sqrt2}{2}"), r"We get $\boxed{\frac{\sqrt{2}}{2}}$.", OK),
    (r1(r"2\pi"), r"\pi", WRONG),
    (r1(r"\pi"), r"\pi", OK),
    (r1("x^2+2x+1"), "(x+1)^2", OK),
    (r1(r"\infty"), r"\infty", OK),
    (r1(r"\frac{1}{0}"), "0", WRONG),
    # malformed formats
    (" reasoning <answer> 72 </answer>", "72", BAD_FORMAT),  # no </think>
    (" reasoning </think> 72", "72", BAD_FORMAT),  # no <answer>
    (" reasoning </think> <answer> 72", "72", BAD_FORMAT),  # unclosed answer
    (" reasoning </think> 72 </answer>", "72", BAD_FORMAT),  # close without open
    (" <answer> 72 </answer> reasoning </think>", "72", BAD_FORMAT),  # answer before think close
    (" reasoning </think> <answer>  </answer>", "72", WRONG),  # empty answer: tags complete, nothing to grade
    (" reasoning </think> <answer> 71 </answer> <answer> 72 </answer>", "72", OK),  # last complete block
    (" reasoning </think><answer>72</answer>", "72", OK),  # no spaces needed
    ("", "72", BAD_FORMAT),
]


@pytest.mark.parametrize("response,ground_truth,expected", TABLE)
def test_r1_zero_table(response, ground_truth, expected):
    rewards = r1_zero_lenient_reward_fn(response, ground_truth)
    assert (rewards["format_reward"], rewards["answer_reward"], rewards["reward"]) == expected


def test_table_is_large_enough():
    assert len(TABLE) >= 60


def test_pool_agrees_with_in_process_grading(pool):
    results = pool.grade([t[0] for t in TABLE], [t[1] for t in TABLE], reward_fn="r1_zero_lenient")
    got = [(r.format_reward, r.answer_reward, r.reward) for r in results]
    assert got == [t[2] for t in TABLE]
    assert not any(r.timed_out or r.error for r in results)


def test_fast_path_and_cas_agree_on_the_table():
    """The fast path may only shortcut what the CAS would decide the same way."""
    for response, ground_truth, expected in TABLE:
        rewards = r1_zero_lenient_reward_fn(response, ground_truth, fast_path=False)
        assert rewards["reward"] == expected[2], (response, ground_truth)


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize("response,answer", [
    (r1("72"), "72"),
    (" a </think> <answer>1</answer> <answer>2</answer>", "2"),
    (" a </think> <answer>1</answer> <answer>2", "1"),
    (" a </think> b </think> <answer>3</answer>", "3"),
    (" a </think> <answer></answer>", ""),
    (" a <answer>1</answer> </think>", None),
    (" a </think> <answer>1", None),
    ("no tags at all", None),
])
def test_extract_answer(response, answer):
    assert extract_answer(response) == answer


@pytest.mark.parametrize("response,finish_reason,failure", [
    (r1("72"), "stop", None),
    (r1("72"), "length", None),
    (" still thinking", "length", "incomplete_generation"),
    (" done </think> <answer> 7", "length", "incomplete_generation"),
    (" no close tag <answer> 72 </answer>", "stop", "missing_think_close"),
    (" closed </think> 72", "stop", "missing_answer_open"),
    (" closed </think> 72 </answer>", "stop", "missing_answer_open"),
    (" <answer> 72 </answer> </think>", "stop", "missing_answer_open"),
    (" closed </think> <answer> 72", "stop", "missing_answer_close"),
    (" closed </think> <answer> 72", None, "missing_answer_close"),
])
def test_format_failure_type(response, finish_reason, failure):
    assert format_failure_type(response, finish_reason) == failure


@pytest.mark.parametrize("text,answer", [
    (GSM8K, "72"),
    ("so 1,234 in all.\n#### 1,234", "1234"),
    ("#### -3", "-3"),
    (MATH_SOLUTION, r"\frac{1}{9}"),
    (r"First $\boxed{1}$, then $\boxed{\left\{ \frac{a}{b} \right\}}$.", r"\left\{ \frac{a}{b} \right\}"),
    (r"\fbox{x^{2}}", "x^{2}"),
    (r"\boxed{\text{(A)}}", r"\text{(A)}"),
    (r" \dfrac{1}{9} ", r"\dfrac{1}{9}"),
    ("(1,2)", "(1,2)"),
])
def test_extract_ground_truth(text, answer):
    assert extract_ground_truth(text) == answer


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


@pytest.mark.parametrize("response,ground_truth,expected", [
    (r"So the area is $\boxed{\frac{1}{2}}$.", "0.5", OK),
    (r"Maybe \boxed{3}, no: \boxed{4}.", "4", OK),
    (r"Maybe \boxed{3}, no: \boxed{4}.", "3", WRONG),
    ("Adding up, the total is 1,234.", "#### 1234", OK),
    ("She has 3/4 of it left", r"\frac{3}{4}", OK),
    ("The answer is 12. Then 13", "12", WRONG),
    ("no number here at all", "12", BAD_FORMAT),
    (r"unclosed \boxed{12", "12", OK),  # falls back to the final number
])
def test_question_only_reward_fn(response, ground_truth, expected):
    rewards = question_only_reward_fn(response, ground_truth)
    assert (rewards["format_reward"], rewards["answer_reward"], rewards["reward"]) == expected
    assert (extract_question_only_answer(response) is None) == (expected == BAD_FORMAT)


def test_grade_one_carries_failure_type():
    result = grade_one(" thinking without end", "72", finish_reason="length")
    assert (result.reward, result.failure_type, result.timed_out, result.error) == (0.0, "incomplete_generation",
                                                                                   False, None)
    assert grade_one(r1("72"), GSM8K).rewards() == {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}


# ---------------------------------------------------------------- hostile answers


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
    """On the main thread math-verify's alarms bound parsing; nothing executes, nothing is correct."""
    canary = tmp_path / "CANARY"
    for answer in hostile_answers(canary):
        start = time.perf_counter()
        rewards = r1_zero_lenient_reward_fn(r1(answer), "72")
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
    code = ("from hf_sft.grading import lenient; lenient.MATH_VERIFY_TIMEOUT_S = None; "
            "print(lenient.answers_equal(r'\\infty^{\\infty}', '72'), lenient.answers_equal(r'\\infty', r'\\infty'))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "4"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]


def test_oversized_answer_is_refused_quickly():
    start = time.perf_counter()
    assert r1_zero_lenient_reward_fn(r1("1" * (MAX_ANSWER_CHARS + 1)), "1" * (MAX_ANSWER_CHARS + 1))["reward"] == 0.0
    assert r1_zero_lenient_reward_fn(r1("x" * 100_000), "72")["reward"] == 0.0
    assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------- the pool


@pytest.fixture(scope="module")
def pool():
    with GradingPool(timeout=2.0, num_workers=2, _test_hooks=True) as p:
        yield p


def test_slow_item_times_out_and_later_items_grade(pool):
    """The worker on the slow item is killed and replaced; the rest of its chunk goes to other workers."""
    restarts = pool.restarts
    responses = [r1(str(i)) for i in range(40)]
    truths = [str(i) for i in range(40)]
    truths[5] = "__sleep__:60"
    start = time.perf_counter()
    results = pool.grade(responses, truths, reward_fn="r1_zero_lenient")
    assert time.perf_counter() - start < pool.timeout + 5
    assert results[5].timed_out and results[5].reward == 0.0 and results[5].error is None
    assert results[5].format_reward == 1.0  # the format is judged without the CAS
    assert all(r.reward == 1.0 and not r.timed_out for i, r in enumerate(results) if i != 5)
    assert pool.restarts == restarts + 1
    assert pool.grade([r1("7")], ["7"])[0].reward == 1.0


def test_dead_worker_is_an_error_not_a_hang(pool):
    results = pool.grade([r1("1"), r1("2"), r1("3")], ["1", "__die__", "3"])
    assert [r.reward for r in results] == [1.0, 0.0, 1.0]
    assert results[1].error is not None and "exit code 3" in results[1].error
    assert not results[1].timed_out


def test_pool_from_a_thread(pool):
    out: dict = {}

    def work():
        out["results"] = pool.grade([r1("0.5"), r1("x"), r1("9")], [r"\frac12", "__sleep__:60", "9"])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert [(r.reward, r.timed_out) for r in out["results"]] == [(1.0, False), (0.0, True), (1.0, False)]


def test_pool_question_only_and_finish_reasons(pool):
    results = pool.grade([r"so \boxed{5}", "I think", " truncated </think> <answer> 5"], ["5", "5", "5"],
                         reward_fn="question_only", finish_reasons=["stop", "length", "stop"])
    assert [r.reward for r in results] == [1.0, 0.0, 1.0]
    assert results[1].failure_type == "incomplete_generation"
    r1_results = pool.grade([" truncated </think> <answer> 5"], ["5"], finish_reasons=["length"])
    assert r1_results[0].failure_type == "incomplete_generation" and r1_results[0].format_reward == 0.0


def test_pool_throughput_on_simple_numbers(pool):
    n = 4000
    start = time.perf_counter()
    results = pool.grade([r1(str(i)) for i in range(n)], [f"#### {i if i % 4 else i + 1}" for i in range(n)])
    rate = n / (time.perf_counter() - start)
    assert sum(r.reward for r in results) == n - n // 4
    assert rate > 500, f"{rate:.0f} items/s"  # ~15,000/s on an idle 2-core machine; CI machines are shared


def test_pool_rejects_bad_arguments(pool):
    assert pool.grade([], []) == []
    with pytest.raises(ValueError):
        pool.grade(["a"], ["1", "2"])
    with pytest.raises(ValueError):
        pool.grade(["a"], ["1"], reward_fn="nope")
    with pytest.raises(ValueError):
        GradingPool(start_method="fork")


def test_closed_pool_refuses_work():
    p = GradingPool(num_workers=1)
    p.close()
    with pytest.raises(RuntimeError):
        p.grade([r1("1")], ["1"])
