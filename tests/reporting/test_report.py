"""Plots, summary tables and the HTML report, from result files written by the project's results writer.

The HTML is also opened in a real headless Chromium (Debian's `chromium`; skipped when absent) to check
that the examples are listed, that filtering by category shows only that category, and that a response
containing <script> is shown as text and never runs.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hf_sft.report import build_comparison, build_run_report, main as report_main, run_ref
from hf_sft.evaluation.results import eval_logs_dir, write_eval_results
from tests.helpers import record, summary

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\"> </think>"


def make_run(run_dir: Path, accuracies=(0.0, 0.5, 0.75), steps=(0, 10, 20)) -> Path:
    """A run with three evals (one with a hostile response), a torn summary and a torn log line, and
    trainer_state.json, as a crash in the middle of a fourth eval would leave it."""
    for step, acc in zip(steps, accuracies):
        n_correct = int(acc * 4)
        records = [record(i, "correct") for i in range(n_correct)]
        records += [record(n_correct, "wrong_answer", response=HOSTILE + " <answer> 0 </answer>")]
        records += [record(i, "format_failure", "missing_answer_close") for i in range(n_correct + 1, 4)]
        write_eval_results(run_dir, step, records, summary(step, records))
    logs = eval_logs_dir(run_dir)
    (logs / "summary_eval_step_30_20990101-000000.json").write_text('{"eval_step": 30, "metr')  # torn
    with open(next(logs.glob(f"eval_step_{steps[-1]}_*.jsonl")), "a") as f:
        f.write('{"index": 99, "categ')  # torn last line
    history = [{"step": s, "loss": 3.0 / s, "entropy": 2.0, "token_accuracy": s / 30} for s in range(1, 21)]
    (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return run_dir


class ExampleParser(HTMLParser):
    """Collects the example <article>s: attributes, hidden or not, and the text of their <pre>s."""

    def __init__(self):
        super().__init__()
        self.examples, self.title, self._in_title, self._pre = [], "", False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "article" and "ex" in attrs.get("class", "").split():
            self.examples.append({**attrs, "hidden": "hidden" in attrs, "texts": []})
        elif tag == "pre" and self.examples:
            self._pre = []
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "pre" and self._pre is not None:
            self.examples[-1]["texts"].append("".join(self._pre))
            self._pre = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._pre is not None:
            self._pre.append(data)
        if self._in_title:
            self.title += data


def parse(page: str) -> ExampleParser:
    parser = ExampleParser()
    parser.feed(page)
    return parser


def test_run_report_writes_plots_table_and_a_self_contained_page(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert report_main([str(run)]) == 0
    out = run / "report"
    for name in ("accuracy.png", "categories.png", "length_entropy.png", "format_failures.png", "training.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    printed = capsys.readouterr().out
    assert "| step | accuracy | 95% CI | format accuracy | format 95% CI | response length | entropy |" in printed
    # the torn step-30 summary is skipped; 3 of 4 correct: Wilson [0.301, 0.954]
    assert "| 20 | 0.750 | [0.301, 0.954] | 1.000 | [0.510, 1.000] | 23.000 | 1.000 |" in printed
    assert "Graded with `r1_zero`; intervals are Wilson 95%." in printed
    summary_md = (out / "summary.md").read_text()
    assert summary_md.split("## By subject")[0].count("\n| ") == 4  # header + 3 steps
    assert "| Algebra | 2 | 2 | 1.000 | [0.342, 1.000] |" in summary_md  # step 20: indices 0 and 2
    assert "## By level (step 20)" in summary_md
    assert (out / "by_subject.png").exists() and (out / "by_level.png").exists()
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 7  # 5 + accuracy by subject and by level
    assert "<h2>By subject</h2>" in page and "[0.301, 0.954]" in page
    assert "http://" not in page and "https://" not in page  # no CDN, no network
    assert "<script>document.title" not in page and "onerror=\"document" not in page
    assert html.escape(HOSTILE) in page
    parsed = parse(page)
    assert len(parsed.examples) == 12  # 3 evals x 4 examples; the torn line is skipped
    assert {e["data-step"] for e in parsed.examples} == {"0", "10", "20"}
    assert sum(HOSTILE in e["texts"][1] for e in parsed.examples) == 3  # the response, as text


def test_report_of_a_run_with_nothing_evaluated_yet(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    page = build_run_report(run, quiet=True).read_text()
    assert "No evaluation has been written yet" in page and "No per-example logs yet" in page
    assert not list((run / "report").glob("*.png"))


def test_comparison_of_runs_from_recipes_and_directories(tmp_path, capsys):
    runs = {"n128": (0.1, 0.3, 0.2), "full": (0.0, 0.5, 0.5), "filtered": (0.0, 0.5, 0.75)}
    recipes = []
    for name, accs in runs.items():
        make_run(tmp_path / name, accs)
        recipe = tmp_path / f"{name}.yaml"
        size = "num_train_examples: 128\n" if name == "n128" else ""
        data = tmp_path / f"{name}.jsonl"
        data.write_text('{"prompt": "p", "response": "r"}\n' * (7 if name == "full" else 5))
        recipe.write_text(f"output_dir: {tmp_path / name}\ntrain_data: {data}\n{size}")
        recipes.append(str(recipe))
    md = build_comparison([run_ref(r) for r in recipes], tmp_path / "cmp")
    text = md.read_text()
    assert "| n128 | 128 | 20 | 0.000 | 0.250 | 10 | 0.250 |" in text  # 1 of 4 correct at step 10 only
    assert "| full | 7 | 20 | 0.500 | 0.500 | 10 | 0.750 |" in text  # a tie goes to the earlier step
    assert "| filtered | 5 | 20 | 0.750 | 0.750 | 20 | 1.000 |" in text
    assert "Final accuracy, filtered minus full: +0.250" in text
    assert "## Final accuracy by subject" in text and "| run | Algebra | Number Theory |" in text
    for name in ("accuracy_curves.png", "final_best.png", "comparison.json"):
        assert (tmp_path / "cmp" / name).exists()
    assert run_ref(str(tmp_path / "full")).label == "full" and run_ref(str(tmp_path / "full")).size is None
    capsys.readouterr()


# ---------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless browser test needs Debian's chromium: apt-get install -y chromium")


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "LANG": "C.UTF-8"})


@needs_chromium
@pytest.mark.parametrize("category", ["wrong_answer", "correct", "format_failure"])
def test_browser_lists_examples_and_filters_by_category(tmp_path, category):
    run = make_run(tmp_path / "run")
    url = build_run_report(run, quiet=True).resolve().as_uri()
    # Default view: the last step, all categories.
    dom = chromium(["--dump-dom", url], tmp_path / "profile")
    parsed = parse(dom.stdout)
    assert len(parsed.examples) == 12, dom.stderr[-2000:]
    visible = [e for e in parsed.examples if not e["hidden"]]
    assert {e["data-step"] for e in visible} == {"20"} and len(visible) == 4
    assert 'data-ready="1"' in dom.stdout and 'data-shown="4"' in dom.stdout  # the script ran
    # Filtered view (the filters live in the URL fragment): only that category, at every step.
    dom = chromium(["--dump-dom", f"{url}#step=all&category={category}"], tmp_path / "profile")
    parsed = parse(dom.stdout)
    visible = [e for e in parsed.examples if not e["hidden"]]
    expected = {"wrong_answer": 3, "correct": 0 + 2 + 3, "format_failure": 3 + 1 + 0}[category]
    assert len(visible) == expected
    assert {e["data-category"] for e in visible} == {category}
    assert all(e["hidden"] for e in parsed.examples if e["data-category"] != category)
    if category == "wrong_answer":  # once: only where the graders disagree (a wrong answer per step); a subject
        dom = chromium(["--dump-dom", f"{url}#step=all&graders=disagree"], tmp_path / "profile")
        visible = [e for e in parse(dom.stdout).examples if not e["hidden"]]
        assert len(visible) == 3 and {e["data-disagree"] for e in visible} == {"1"}
        dom = chromium(["--dump-dom", f"{url}#step=all&subject=Algebra"], tmp_path / "profile")
        assert {e["data-subject"] for e in parse(dom.stdout).examples if not e["hidden"]} == {"Algebra"}
    # The hostile response is text, and its script never ran.
    assert parsed.title == "hf-sft run run" and "pwned" not in parsed.title


@needs_chromium
def test_browser_screenshot_of_a_filtered_report(tmp_path):
    run = make_run(tmp_path / "run")
    url = build_run_report(run, quiet=True).resolve().as_uri()
    shot = Path(os.environ.get("HF_SFT_SCREENSHOT_DIR", tmp_path)) / "report_wrong_answer.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    done = chromium([f"--screenshot={shot}", "--window-size=1280,2400", f"{url}#step=all&category=wrong_answer"],
                    tmp_path / "profile")
    assert shot.exists() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the ablation runner


@pytest.mark.slow
def test_ablation_runner_goes_past_a_failed_run_then_compares(tmp_path, capsys):
    from hf_sft.ablation import main as ablation_main
    from tests.helpers import REPO_ROOT

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(f"base: {REPO_ROOT}/recipes/demo.yaml\nmodel_config: {REPO_ROOT}/recipes/models/tiny_qwen2.json\n"
                    f"output_dir: {tmp_path / 'good'}\nmax_steps: 2\nnum_train_examples: 32\neval_backend: none\n")
    bad.write_text(f"base: {good}\noutput_dir: {tmp_path / 'bad'}\nlearning_rat: 1.0\n")  # a typo: fails at parse
    code = ablation_main([str(bad), str(good), "--compare_dir", str(tmp_path / "cmp"), "--", "--logging_steps", "1"])
    out = capsys.readouterr()
    assert code == 1
    assert "FAILED (exit" in out.out and "1 of 2 runs failed" in out.err and str(bad) in out.err
    assert "Did you mean 'learning_rate'" in (tmp_path / "cmp" / "logs" / "bad.log").read_text()
    assert (tmp_path / "good" / "model.safetensors").exists()  # the run after the failed one still ran
    assert (tmp_path / "good" / "report" / "report.html").exists()
    assert (tmp_path / "good" / "report" / "training.png").exists()
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| bad | 32 | – |" in text and "| good | 32 | – |" in text  # no evals: sizes, and dashes
