"""The HTML report in a real headless Chromium (Debian's `chromium`; skipped when absent): the examples are
listed, filtering by category shows only that category, and a response containing <script> is shown as text
and never runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hf_sft.reporting.run_report import build_run_report
from tests.helpers import make_run, parse

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
