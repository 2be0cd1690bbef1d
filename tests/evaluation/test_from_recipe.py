"""Evaluation built from a recipe: the same problems and sampling for train.py and evaluate.py, and
evaluation that cannot deadlock or time out a multi-process run (issue 11, point 5).

FSDP and ZeRO-3 need GPUs (on CPU accelerate runs them as DDP), so the refusal is checked on the
decision function add_eval_callback calls with the trainer's own ``weights_are_sharded()``.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from hf_sft.config import RecipeError, parse_recipe
from hf_sft.evaluation.from_recipe import check_eval_backend_for_parallelism, eval_problems, sampling_settings
from tests.helpers import REPO_ROOT

DEMO = os.path.join(REPO_ROOT, "recipes", "demo.yaml")


def _eval(backend, mode="async"):
    return SimpleNamespace(eval_backend=backend, eval_mode=mode)


@pytest.mark.parametrize("backend,mode", [("hf", "async"), ("vllm", "blocking")])
def test_rank0_only_generation_under_sharded_training_is_refused(backend, mode):
    with pytest.raises(RecipeError, match="deadlocks under FSDP / DeepSpeed ZeRO-3"):
        check_eval_backend_for_parallelism(_eval(backend, mode), sharded=True, world_size=3, ddp_timeout=1800)


def test_async_vllm_under_sharding_and_hf_under_ddp_are_allowed(caplog):
    check_eval_backend_for_parallelism(_eval("vllm"), sharded=True, world_size=3, ddp_timeout=1800)
    check_eval_backend_for_parallelism(_eval("none"), sharded=True, world_size=3, ddp_timeout=1800)
    with caplog.at_level(logging.WARNING, logger="hf_sft"):
        check_eval_backend_for_parallelism(_eval("hf"), sharded=False, world_size=2, ddp_timeout=1800)
    assert "longer than ddp_timeout (1800s)" in caplog.text


def test_train_and_evaluate_read_the_same_sampling_from_a_recipe():
    from hf_sft.evaluate import parse_args

    overrides = ["--eval_temperature", "0.7", "--eval_top_p", "0.9", "--eval_max_new_tokens", "33",
                 "--eval_stop", "</answer>", "--eval_seed", "5", "--eval_num_samples", "3"]
    _, _, eval_args, _ = parse_recipe([DEMO, *overrides])
    _, command_eval_args = parse_args([DEMO, "--model_name_or_path", "x", *overrides])
    sampling = sampling_settings(eval_args)
    assert (sampling.temperature, sampling.top_p, sampling.max_new_tokens, sampling.stop, sampling.seed,
            sampling.num_samples) == (0.7, 0.9, 33, ["</answer>"], 5, 3)
    assert sampling_settings(command_eval_args) == sampling


def test_train_and_evaluate_load_the_same_problems_from_a_recipe():
    """evaluate.py's command arguments name eval_data / eval_split / prompt_template as the recipe does."""
    from hf_sft.evaluate import parse_args

    _, data_args, eval_args, _ = parse_recipe([DEMO, "--eval_num_examples", "5", "--eval_seed", "3"])
    command_args, command_eval_args = parse_args([DEMO, "--model_name_or_path", "x", "--eval_num_examples", "5",
                                                  "--eval_seed", "3"])
    problems = eval_problems(data_args, eval_args)
    assert len(problems) == 5 and problems.dataset == data_args.eval_data
    assert all(p.startswith("A conversation between User and Assistant") for p in problems.prompts), problems.prompts[0]
    assert eval_problems(command_args, command_eval_args) == problems
    other = eval_problems(data_args, parse_recipe([DEMO, "--eval_num_examples", "5", "--eval_seed", "4"])[2])
    assert other.problems != problems.problems  # the seed picks the subset
