"""`python -m hf_sft.ablation`: recipes run one after another, a failed one does not stop the rest, then the
comparison."""

from __future__ import annotations

import pytest


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
