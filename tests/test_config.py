"""Recipes: YAML + command-line overrides through one HfArgumentParser, typos caught."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hf_sft.config import RecipeError, parse_recipe
from tests.helpers import REPO_ROOT


def write(path, text):
    path.write_text(text)
    return str(path)


def test_yaml_sets_defaults_and_command_line_overrides(tmp_path):
    recipe = write(tmp_path / "r.yaml", "train_data: a.jsonl\nlearning_rate: 1.0e-5\noutput_dir: out\n"
                                        "loss_normalization: sequence\nnum_train_examples: 128\n")
    model, data, ev, train = parse_recipe([recipe, "--learning_rate", "2e-5", "--eval_backend", "hf"])
    assert data.train_data == "a.jsonl" and data.num_train_examples == 128
    assert train.learning_rate == 2e-5
    assert train.loss_normalization == "sequence"
    assert ev.eval_backend == "hf"
    assert train.output_dir == "out"


def test_unknown_key_names_the_file_and_suggests_the_close_match(tmp_path):
    recipe = write(tmp_path / "typo.yaml", "learning_rat: 1.0e-5\n")
    with pytest.raises(RecipeError, match=r"typo\.yaml: unknown recipe key 'learning_rat'\. Did you mean 'learning_rate'\?"):
        parse_recipe([recipe])


def test_base_recipe_is_merged_underneath(tmp_path):
    write(tmp_path / "base.yaml", "learning_rate: 1.0e-5\nnum_train_epochs: 3\ntrain_data: full.jsonl\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nnum_train_examples: 128\nnum_train_epochs: 5\n")
    _, data, _, train = parse_recipe([child, "--output_dir", str(tmp_path / "o")])
    assert (train.learning_rate, train.num_train_epochs, data.num_train_examples) == (1e-5, 5, 128)
    assert data.train_data == "full.jsonl"


def test_missing_recipe_and_bad_values_are_clear(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        parse_recipe([str(tmp_path / "nope.yaml")])
    recipe = write(tmp_path / "r.yaml", "loss_normalization: banana\noutput_dir: o\n")
    with pytest.raises(RecipeError, match="loss_normalization must be 'token' or 'sequence'"):
        parse_recipe([recipe])


def test_shipped_recipes_parse(monkeypatch):
    import glob
    import os

    from tests.helpers import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)
    recipes = sorted(glob.glob(os.path.join("recipes", "*.yaml")))
    assert "recipes/demo.yaml" in recipes and "recipes/full.yaml" in recipes
    for recipe in recipes:
        parse_recipe([recipe, "--output_dir", "/tmp/unused", "--use_cpu", "true", "--bf16", "false"])


@pytest.mark.parametrize("key", ["model_name_or_path", "tokenizer_name_or_path", "model_config"])
def test_missing_local_model_path_is_named_before_anything_loads(tmp_path, key):
    from hf_sft.training.modeling import ModelLoadError, load_model, load_tokenizer

    missing = str(tmp_path / "no-such-model")
    argv = [os.path.join(REPO_ROOT, "recipes", "demo.yaml"), "--output_dir", str(tmp_path / "run"), f"--{key}", missing]
    model_args, _, _, training_args = parse_recipe(argv)
    with pytest.raises(ModelLoadError, match=f"'{missing}' does not exist"):
        load_model(model_args, training_args, load_tokenizer(model_args))


def test_unknown_command_line_option_suggests_the_closest_key():
    with pytest.raises(RecipeError, match="unknown option '--learnin_rate'. Did you mean '--learning_rate'"):
        parse_recipe([os.path.join(REPO_ROOT, "recipes", "demo.yaml"), "--learnin_rate", "1e-3"])


def test_the_command_ends_bad_input_with_its_message_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "hf_sft", "train.py"),
                           os.path.join(REPO_ROOT, "recipes", "demo.yaml"), "--max_steps", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: model_config 'recipes/models/tiny_qwen2.json' does not exist "
        f"(relative paths are read from the current directory, {tmp_path})")
    assert "Traceback" not in proc.stderr


def test_eval_graders_and_samples_are_checked_at_parse_time(tmp_path):
    recipe = write(tmp_path / "r.yaml", "output_dir: o\neval_reward_fn: r1_zero_lenient\neval_num_samples: 4\n")
    _, _, ev, _ = parse_recipe([recipe])
    assert (ev.eval_reward_fn, ev.eval_num_samples, ev.eval_temperature) == ("r1_zero_lenient", 4, 1.0)
    with pytest.raises(RecipeError, match="eval_num_samples 4 needs eval_temperature > 0"):
        parse_recipe([recipe, "--eval_temperature", "0"])
    with pytest.raises(RecipeError, match="eval_reward_fn must be one of r1_zero, r1_zero_lenient, question_only"):
        parse_recipe([recipe, "--eval_reward_fn", "r1_zero_strict"])
