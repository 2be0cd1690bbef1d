"""Prompt templates by name or path; in a checkout they are the top-level prompts/ files that recipes name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hf_sft.data.prompts import PROMPTS_DIR, format_prompt, load_template
from tests.helpers import REPO_ROOT


def test_names_are_the_files_of_the_top_level_prompts_dir(tmp_path):
    assert PROMPTS_DIR == Path(REPO_ROOT).resolve() / "prompts"  # through the hf_sft/prompts symlink
    assert load_template("r1_zero") == (PROMPTS_DIR / "r1_zero.prompt").read_text()
    own = tmp_path / "mine.prompt"
    own.write_text("Q: {question}\nA:")
    assert format_prompt(load_template(str(own)), r"\frac{1}{2}?") == "Q: \\frac{1}{2}?\nA:"


def test_a_missing_template_names_the_available_ones_and_a_template_needs_its_slot(tmp_path):
    available = sorted(p.stem for p in PROMPTS_DIR.glob("*.prompt"))
    assert "r1_zero" in available and "question_only" in available
    with pytest.raises(FileNotFoundError, match=re.escape(f"available: {available}")):
        load_template("r2_zero")
    bad = tmp_path / "bad.prompt"
    bad.write_text("no slot here")
    with pytest.raises(ValueError, match="must contain the slot"):
        load_template(str(bad))
