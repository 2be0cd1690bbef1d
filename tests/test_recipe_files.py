"""Recipe YAML as dicts: base composition and errors that name the file, with no torch behind them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_sft.recipe_files import RecipeError, load_recipe_file


def test_base_is_merged_underneath_relative_to_the_file(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text("learning_rate: 1.0e-4\nnum_train_epochs: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: shared/base.yaml\nnum_train_epochs: 5\n")
    assert load_recipe_file(child) == {"learning_rate": 1.0e-4, "num_train_epochs": 5}


@pytest.mark.parametrize("text,message", [("a: [1,\n", "not valid YAML"), ("- 1\n- 2\n", "must be a mapping")])
def test_bad_files_name_themselves(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe_file(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe_file(tmp_path / "missing.yaml")


def test_reading_a_recipe_loads_no_torch(tmp_path):
    code = ("import sys; from hf_sft.recipe_files import load_recipe_file; load_recipe_file(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\n")
    out = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
