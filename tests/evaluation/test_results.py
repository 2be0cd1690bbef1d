"""The results writer under a real crash: a process SIGKILLed in the middle of writing an eval.

The child writes step 0, then is killed by SIGKILL at the exact moment of the rename that would publish
step 10's per-example log (or its summary): the worst moment for a writer that is not atomic. The
parent then reads the directory as the report does.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from hf_sft.evaluation.results import completed_eval_steps, eval_logs_dir, latest_summaries, read_eval_records, \
    read_summaries, write_eval_results
from hf_sft.reporting.run_report import build_run_report
from tests.helpers import REPO_ROOT, record, summary

CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from hf_sft.evaluation import results
    from tests.helpers import record, summary

    run_dir, kill_at = sys.argv[1], int(sys.argv[2])
    step0 = [record(0, "correct"), record(1, "wrong_answer")]
    results.write_eval_results(run_dir, 0, step0, summary(0, step0))
    renames = 0
    real_replace = os.replace

    def replace_then_die(src, dst):  # the process dies where the OS would have published the file
        global renames
        renames += 1
        if renames == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace_then_die
    step10 = [record(i, "correct") for i in range(2000)]
    results.write_eval_results(run_dir, 10, step10, summary(10, step10))
""")


def crash_while_writing(run_dir, kill_at: int) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=REPO_ROOT), str(run_dir), str(kill_at)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("kill_at, published", [(1, "nothing of step 10"), (2, "step 10's log, not its summary")])
def test_a_crash_mid_eval_leaves_earlier_evals_intact_and_readable(tmp_path, kill_at, published):
    run_dir = tmp_path / "run"
    crash_while_writing(run_dir, kill_at)
    logs = eval_logs_dir(run_dir)
    assert [s["eval_step"] for s in read_summaries(run_dir)] == [0]
    assert completed_eval_steps(run_dir) == {0}  # a resumed run evaluates step 10 again
    [log0] = logs.glob("eval_step_0_*.jsonl")
    assert [json.loads(line)["category"] for line in log0.read_text().splitlines()] == ["correct", "wrong_answer"]
    step10_logs = list(logs.glob("eval_step_10_*.jsonl"))
    assert len(step10_logs) == (kill_at - 1), published
    # The plotting code reads what is there: the table holds step 0 alone, nothing torn is shown.
    report = build_run_report(run_dir, quiet=True)
    assert "| 0 |" in (report.parent / "summary.md").read_text()
    assert "| 10 |" not in (report.parent / "summary.md").read_text()

    # The re-evaluation of step 10 publishes it and drops the orphaned log the crash left.
    step10 = [record(0, "correct")]
    write_eval_results(run_dir, 10, step10, summary(10, step10))
    assert [s["eval_step"] for s in read_summaries(run_dir)] == [0, 10]
    [log10] = logs.glob("eval_step_10_*.jsonl")
    assert len(log10.read_text().splitlines()) == 1


def test_readers_take_the_latest_eval_of_a_step_and_skip_what_does_not_parse(tmp_path):
    first, again = [record(0, "wrong_answer")], [record(0, "correct"), record(1, "correct")]
    write_eval_results(tmp_path, 0, first, summary(0, first))
    logs = eval_logs_dir(tmp_path)
    for path in logs.iterdir():  # the same step evaluated again a second later: its files sort after
        path.rename(path.with_name(path.name.replace("_2", "_1", 1)))
    write_eval_results(tmp_path, 0, again, summary(0, again))
    (logs / "summary_eval_step_5_20990101-000000.json").write_text("[1, 2]")  # parses, but no summary
    (logs / "eval_step_x_20990101-000000.jsonl").write_text("{}\n")  # not a name the writer gives
    with open(next(logs.glob("eval_step_0_2*.jsonl")), "a") as f:
        f.write('[]\n{"index": 9, "categ')  # a line that is no record, and a torn one
    assert [s["total_examples"] for s in latest_summaries(tmp_path)] == [2]
    assert {step: [r["index"] for r in records] for step, records in read_eval_records(tmp_path).items()} == {0: [0, 1]}


def test_imports_neither_torch_nor_transformers():
    code = ("import sys, hf_sft.evaluation.results; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
    assert out.strip() == "[]"
