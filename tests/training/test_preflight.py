"""Checks before any work: each bad path is one line naming its recipe key, before tokenisation starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hf_sft.config import parse_recipe
from hf_sft.training.preflight import (PreflightError, check_before_work, check_data_ref, check_model_ref,
                                       check_output_dir, checkpoints_kept, count_parameters)
from tests.helpers import REPO_ROOT

DEMO = os.path.join(REPO_ROOT, "recipes", "demo.yaml")


def recipe(tmp_path, *extra):
    return parse_recipe([DEMO, "--output_dir", str(tmp_path / "run"), *extra])


def test_bad_model_path_fails_with_its_key_before_any_tokenisation(tmp_path):
    proc = subprocess.run([sys.executable, "hf_sft/train.py", "recipes/demo.yaml", "--output_dir", str(tmp_path / "run"),
                           "--model_name_or_path", str(tmp_path / "no-such-model")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [f"error: model_name_or_path '{tmp_path / 'no-such-model'}' does not exist"]
    for work in ("Tokenizing", "Formatting", "Generating train split"):
        assert work not in proc.stdout + proc.stderr


@pytest.mark.parametrize("key,value,message", [
    ("model_name_or_path", "./no-such-dir", "does not exist"),
    ("model_name_or_path", "not a//hub id", "neither an existing local path nor a hub model id"),
    ("model_name_or_path", "someone/never-downloaded", "offline .* no cached copy"),  # conftest: HF_HUB_OFFLINE=1
    ("tokenizer_name_or_path", "builtin:addition-bpf", "unknown builtin asset"),
    ("model_config", "recipes/models/none.json", "does not exist"),
])
def test_bad_model_references_name_their_key(key, value, message):
    with pytest.raises(PreflightError, match=f"^{key}:? .*{message}"):
        check_model_ref(key, value, config_file=key == "model_config")


def test_a_directory_that_holds_no_model_is_refused(tmp_path):
    with pytest.raises(PreflightError, match="model_name_or_path: .* without config.json"):
        check_model_ref("model_name_or_path", str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    check_model_ref("model_name_or_path", str(tmp_path))


@pytest.mark.parametrize("value,message", [("data/missing.jsonl", "does not exist"),
                                           ("builtin:addition/dev", "unknown builtin asset"),
                                           ("not//a dataset", "nor a hub dataset id")])
def test_bad_data_references_name_their_key(value, message):
    with pytest.raises(PreflightError, match=f"^eval_data:? .*{message}"):
        check_data_ref("eval_data", value)


def test_good_references_pass(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    check_data_ref("train_data", str(tmp_path / "train.jsonl"))
    check_data_ref("train_data", "builtin:addition/train")
    check_data_ref("train_data", "openai/gsm8k")  # a hub dataset id: its shape is all that is checked
    check_model_ref("tokenizer_name_or_path", "builtin:addition-bpe")
    check_model_ref("model_config", "recipes/models/tiny_qwen2.json", config_file=True)


def test_parameter_count_from_the_config_matches_the_model(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_args, *_ = recipe(tmp_path)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(os.path.join(REPO_ROOT, model_args.model_config)))
    assert count_parameters(model_args) == model.num_parameters()


@pytest.mark.parametrize("extra,expected", [
    ((), (0, True)),  # the demo: save_strategy no
    (("--save_strategy", "steps", "--save_steps", "100"), (6, True)),  # 600 steps
    (("--save_strategy", "steps", "--save_steps", "100", "--save_total_limit", "2"), (3, True)),
    (("--save_strategy", "steps", "--save_steps", "0.5"), (2, True)),
    (("--save_strategy", "steps", "--max_steps", "-1"), (1, False)),
])
def test_checkpoints_kept_follows_the_save_settings(tmp_path, extra, expected):
    *_, training_args = recipe(tmp_path, *extra)
    assert checkpoints_kept(training_args) == expected


def test_output_dir_without_room_for_the_checkpoints_is_refused(tmp_path):
    *_, training_args = recipe(tmp_path, "--save_strategy", "steps", "--save_steps", "300")
    check_output_dir(training_args, checkpoint_bytes=1 << 20, weights_bytes=1 << 20)
    with pytest.raises(PreflightError, match=r"^output_dir: .* GiB free but the recipe saves about .*2 checkpoint"):
        check_output_dir(training_args, checkpoint_bytes=1 << 60, weights_bytes=1 << 58)


def test_unwritable_output_dir_is_refused(tmp_path):
    (tmp_path / "a_file").write_text("")  # a directory cannot be made under a file, even by root
    *_, training_args = recipe(tmp_path, "--output_dir", str(tmp_path / "a_file" / "run"))
    with pytest.raises(PreflightError, match="^output_dir: .* is not writable"):
        check_output_dir(training_args, None, None)


def test_the_demo_recipe_passes_and_reports_its_size(tmp_path):
    model_args, data_args, eval_args, training_args = recipe(tmp_path)
    checked = check_before_work(model_args, data_args, eval_args, training_args, weight_itemsize=4)
    assert checked.num_parameters == count_parameters(model_args) > 0
    assert checked.checkpoint_bytes == 3 * 4 * checked.num_parameters
