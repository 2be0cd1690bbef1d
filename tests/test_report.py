"""`python -m hf_sft.report`: a run's plots, table and self-contained page; --compare; argument errors; and the
command never imports torch (it reads what runs wrote to disk, on a machine that may have no torch at all)."""

from __future__ import annotations

import html
import subprocess
import sys

import pytest

from hf_sft.report import main as report_main
from tests.helpers import HOSTILE, REPO_ROOT, make_run, parse


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


def test_compare_writes_into_comparison_of_the_cwd_and_skips_base_recipes(tmp_path, monkeypatch, capsys):
    make_run(tmp_path / "a")
    (tmp_path / "base.yaml").write_text("output_dir: nowhere\n")  # shared settings a glob picks up: not a run
    monkeypatch.chdir(tmp_path)
    assert report_main(["--compare", str(tmp_path / "a"), str(tmp_path / "base.yaml")]) == 0
    names = sorted(p.name for p in (tmp_path / "comparison").iterdir())
    assert names == ["accuracy_curves.png", "comparison.json", "comparison.md", "final_best.png"]
    assert "| base |" not in (tmp_path / "comparison" / "comparison.md").read_text()
    assert "comparison: comparison/comparison.md" in capsys.readouterr().out


def test_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert exit_.value.code == 2 and "one RUN_DIR at a time" in capsys.readouterr().err
    recipe = tmp_path / "no_output.yaml"
    recipe.write_text("learning_rate: 1.0e-4\n")
    assert report_main(["--compare", str(recipe)]) == 2
    assert "the recipe sets no output_dir" in capsys.readouterr().err


TORCH_FREE_CHECK = """
import importlib, pkgutil, sys
import hf_sft.grading, hf_sft.reporting
for wing in (hf_sft.grading, hf_sft.reporting):
    for info in pkgutil.iter_modules(wing.__path__, wing.__name__ + "."):
        importlib.import_module(info.name)
from hf_sft.report import main
assert main([sys.argv[1]]) == 0
assert main(["--compare", sys.argv[2], sys.argv[1], "--out", sys.argv[3]]) == 0
print(sorted(m for m in ("torch", "transformers", "accelerate", "datasets") if m in sys.modules))
"""


def test_grading_reporting_and_the_command_never_load_torch(tmp_path):
    """Every module of both wings imported, a finished run reported and two runs compared (one named by its
    recipe), in a fresh interpreter: torch and the HF training stack stay out of sys.modules."""
    run, other = make_run(tmp_path / "run"), make_run(tmp_path / "other", accuracies=(0.0, 0.25, 0.5))
    recipe = tmp_path / "other.yaml"
    recipe.write_text(f"output_dir: {other}\ntrain_data: builtin:addition/train\n")
    out = subprocess.run([sys.executable, "-c", TORCH_FREE_CHECK, str(run), str(recipe), str(tmp_path / "cmp")],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (run / "report" / "report.html").is_file() and any((tmp_path / "cmp").iterdir())
