"""The deadline pool: its worker lifecycle (timeouts, deaths, threads, closing), its warm start, and the grader
under attack: over a thousand hostile or pathological answers, generated deterministically, graded through
GradingPool with a deadline. Nothing may execute, nothing may hang, nothing may score."""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
import threading
import time
import unicodedata

import pytest

from hf_sft.grading import pool as pool_module
from hf_sft.grading.pool import GradingPool
from tests.helpers import r1

GROUND_TRUTH = "72"
OVERALL_BOUND_S = 540


def code_injections(canary) -> list[str]:
    touch = f"touch {canary}"
    return [
        f"__import__('os').system('{touch}')",
        f"import os; os.system('{touch}')",
        f"eval(\"__import__('os').system('{touch}')\")",
        f"exec(\"import os; os.system('{touch}')\")",
        f"exec(compile(\"open('{canary}', 'w').close()\", 'x', 'exec'))",
        f"open('{canary}', 'w').write('pwned')",
        f"(lambda: __import__('subprocess').run(['touch', '{canary}']))()",
        f"getattr(__builtins__, 'ev' + 'al')(\"__import__('os').system('{touch}')\")",
        f"[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{canary}'])",
        f"__builtins__.__dict__['__import__']('os').system('{touch}')",
        f"Symbol('x').__class__.__init__.__globals__['os'].system('{touch}')",
        f"sympify(\"__import__('os').system('{touch}')\")",
        f"parse_expr(\"__import__('os').system('{touch}')\")",
        f"S(\"__import__('os').system('{touch}')\")",
        f"$(touch {canary})",
        f"`{touch}`",
        f"; {touch}; #",
        f"\\immediate\\write18{{{touch}}}",
        f"\\input{{{canary}}}",
        "{0.__class__.__init__.__globals__}",
        "{0.__class__}",
        "{self.__init__.__globals__[os]}",
        "%s%s%s%s%n",
        "%(__class__)s",
        "{{7*7}}",
        "${7*7}",
        "<script>alert(1)</script>",
        "'; DROP TABLE answers; --",
        r"\def\x{\x}\x",
        r"\newcommand{\a}{\a}\a",
        "lambda: 0",
        "exit()",
        "quit()",
        "import sys; sys.exit(0)",
        "os._exit(0)",
        "signal.alarm(0)",
        "globals()",
        "breakpoint()",
    ]


def enormous_numbers() -> list[str]:
    out = []
    for base in (2, 3, 9, 10, 99):
        for height in (3, 4, 5):
            out.append("^".join([str(base)] * height))
            out.append("^{".join([str(base)] * height) + "}" * (height - 1))
    for k in (6, 9, 12, 30, 100):
        out += [f"10^{{{k}}}!", f"(10^{{{k}}})!", f"\\binom{{10^{{{k}}}}}{{5^{{{k}}}}}", f"\\Gamma(10^{{{k}}})",
                f"1e{'9' * k}", f"2^{{2^{{{k}}}}}", f"{'9' * k}!", f"\\sqrt[10^{{{k}}}]{{2}}"]
    for n in (100, 1000, 4300, 4301, 10_000, 100_000):
        out += ["9" * n, "0." + "3" * n, "1" + "0" * n, f"\\frac{{{'1' * n}}}{{{'3' * n}}}"]
    out += [r"\prod_{i=1}^{10^{9}} i", r"\sum_{i=1}^{10^{12}} i^{i}", r"\int_0^{10^9} e^{x^2}\,dx",
            r"\lim_{n\to\infty} (1+1/n)^{n^{n}}", "10^{-10^{10}}", r"e^{e^{e^{e^{e}}}}", r"\infty^{\infty}"]
    return out


def deep_nesting() -> list[str]:
    openers = [("{", "}"), ("(", ")"), ("[", "]"), (r"\left(", r"\right)"), (r"\frac{", "}{3}"), (r"\sqrt{", "}"),
               (r"\boxed{", "}"), (r"\text{", "}"), ("x^{", "}"), (r"\{", r"\}")]
    return [o * n + "5" + c * n for o, c in openers for n in (6, 11, 40, 500, 5000)] + [
        "{" * 5000, "}" * 5000, "(" * 100_000, r"\frac" * 1000, "^" * 1000, "\\" * 10_000, "$" * 1000]


def lookalike_digits() -> list[str]:
    """'72' written in every other script's digits, plus superscripts, circled and zero-width tricks."""
    sevens, twos = {}, {}
    for cp in range(0x80, 0x1FBFA):
        ch = chr(cp)
        value = unicodedata.digit(ch, None)
        if value in (7, 2):
            (sevens if value == 7 else twos)[unicodedata.name(ch, "").rsplit(" ", 1)[0]] = ch
    out = [sevens[k] + twos[k] for k in sorted(sevens) if k in twos]
    out += ["7\u200b2", "7\u200d2", "\u202e27", "7\u00002", "7\ufe0f2", "7\u03002", "\u0037\u20e3\u0032\u20e3",
            "seven two", "VII II", "LXXII", "0x48", "0o110", "0b1001000", "72j", "72L", "7_2", "+72+", "72!"]
    return out


def control_characters() -> list[str]:
    return ["\x00" * 64, "\x00", "7\x002", "72\x00", "\x0072", "\x1b[2J", "\x07" * 10, "\r\n" * 100, "\x7f\x08\x08",
            "\ud800", "\udfff" * 3, "\ufffe\uffff", "\U0010ffff"]


def huge_answers() -> list[str]:
    return ["7" * 100_000, "x" * 100_000, "{" * 50_000 + "}" * 50_000, r"\frac{1}{2}" * 9000, "1+" * 50_000 + "1",
            ("a" * 1000 + " ") * 100, "\x00" * 100_000, "٧" * 100_000]


WRAPPERS = [
    lambda a: a,
    lambda a: f"${a}$",
    lambda a: f"\\boxed{{{a}}}",
    lambda a: f"\\text{{{a}}}",
    lambda a: f"\\({a}\\)",
]


def hostile_answers(canary) -> list[str]:
    rng = random.Random(20240229)
    families = [code_injections(canary), enormous_numbers(), deep_nesting(), lookalike_digits(),
                control_characters(), huge_answers()]
    base = [a for family in families for a in family]
    wrapped = [w(a) for a in base for w in WRAPPERS if len(a) < 20_000]
    mixtures = [" ".join(rng.choice(base)[:3000] for _ in range(rng.randint(2, 4))) for _ in range(300)]
    answers = base + wrapped + mixtures
    assert not any(a.replace(" ", "") == GROUND_TRUTH for a in answers)
    return answers


@pytest.mark.slow
def test_grader_under_attack(tmp_path, capsys):
    canary = tmp_path / "CANARY"
    answers = hostile_answers(canary)
    assert len(answers) >= 1000
    responses = [f" I will be sneaky. </think> <answer> {a} </answer>" for a in answers]
    out: dict = {}

    def attack():
        with GradingPool(timeout=3.0) as pool:
            start = time.perf_counter()
            out["results"] = pool.grade(responses, [GROUND_TRUTH] * len(responses), reward_fn="r1_zero_lenient",
                                        compare=True)  # alternate_reward: the reference-style r1_zero
            out["seconds"] = time.perf_counter() - start
            out["restarts"] = pool.restarts

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    thread.join(OVERALL_BOUND_S)
    assert not thread.is_alive(), f"grading {len(answers)} hostile answers did not finish in {OVERALL_BOUND_S}s"

    results = out["results"]
    timed_out = sum(r.timed_out for r in results)
    errors = sum(r.error is not None for r in results)
    graded = sum(not r.timed_out and r.error is None for r in results)
    with capsys.disabled():
        print(f"\n[grader attack] {len(results)} hostile answers in {out['seconds']:.1f}s: graded {graded}, "
              f"timed out {timed_out}, errors {errors}, worker restarts {out['restarts']}")
        for i in [i for i, r in enumerate(results) if r.timed_out or r.error][:10]:
            print(f"    {'timed out' if results[i].timed_out else results[i].error}: {answers[i][:60]!r}")

    assert not canary.exists(), "a hostile answer executed code"
    assert len(results) == len(answers)
    assert graded + timed_out + errors == len(results)
    assert all(r.reward == 0.0 and r.answer_reward == 0.0 for r in results), [
        answers[i][:80] for i, r in enumerate(results) if r.reward]
    assert all(r.format_reward == 1.0 for r in results)
    # The reference grader reads answers with Python's float(), which takes any script's decimal digits and
    # "7_2": those (bare or wrapped) equal 72 there, as in the published grader. Nothing else may score.
    allowed = {w(a) for a in lookalike_digits() if _python_float(a) == 72.0 for w in WRAPPERS}
    scored = {a for a, r in zip(answers, results) if r.alternate_reward}
    assert scored and scored <= allowed, [a[:80] for a in scored - allowed]
    assert sum(r.alternate_reward is None for r in results) == timed_out + errors


def _python_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------- the pool's lifecycle


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


def test_forkserver_preload_names_all_import():
    """CPython's forkserver skips a preload name that fails to import, silently losing the warm start."""
    for name in pool_module.PRELOAD:
        importlib.import_module(name)
    assert {"hf_sft.grading.registry", "hf_sft.grading.pool_worker", pool_module.__name__} <= set(pool_module.PRELOAD)
    assert "__main__" not in pool_module.PRELOAD


CALLER_SCRIPT = """
import os, sys
with open(os.environ["IMPORT_LOG"], "a") as f:  # every process that runs this file says so
    f.write(f"{__name__} {os.getpid()}\\n")
if __name__ == "__main__":
    from hf_sft.grading.pool import GradingPool
    with GradingPool(num_workers=2, timeout=30) as pool:
        results = pool.grade(["<think>1+1</think> <answer>2</answer>"] * 4, ["2"] * 4)
    print(sum(r.reward for r in results))
"""


@pytest.mark.parametrize("how", ["script", "module"])
def test_workers_do_not_import_the_callers_script(tmp_path, how):
    """multiprocessing re-runs the caller's __main__ in each forkserver child unless told it is already there:
    under train.py that was torch and transformers (~9 s of CPU) in a pool that needs only the graders."""
    (tmp_path / "caller_script.py").write_text(CALLER_SCRIPT)
    log = tmp_path / "imports.log"
    argv = [sys.executable, *(["caller_script.py"] if how == "script" else ["-m", "caller_script"])]
    env = {**os.environ, "IMPORT_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "4.0"
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["__main__"]
