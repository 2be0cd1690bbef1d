"""fp32 master weights under bf16 autocast (the MATH recipes): a tiny AdamW update survives.

With bf16 weights, Adam's first step (lr * sign(grad): 2e-5 here) on a weight of magnitude in
[2^-6, 2^-5) is below half of bf16's ulp there (2^-13 / 2 = 6.1e-5) and is rounded away; with fp32
weights it lands. Both runs are the real SFTTrainer on CPU with the same recipe except torch_dtype.
"""

from __future__ import annotations

import os

import pytest
import torch

from hf_sft.config import parse_recipe
from hf_sft.training.modeling import resolve_dtype
from tests.expensive_runs import start_once
from tests.helpers import REPO_ROOT, make_demo_trainer

LR = 2e-5
# The two tests that read the module's three one-step runs stay on one worker, so the runs are made once.
RUNS = pytest.mark.xdist_group("modeling_runs")


def test_math_recipes_keep_fp32_master_weights_and_compute_in_bf16():
    recipe = os.path.join(REPO_ROOT, "recipes", "full.yaml")
    model_args, _, eval_args, training_args = parse_recipe([recipe, "--use_cpu", "true"])
    assert resolve_dtype(model_args, training_args) == torch.float32
    assert training_args.bf16


def one_step(tmp_path, dtype: str, *extra: str):
    trainer, _ = make_demo_trainer(tmp_path, "--eval_backend", "none", "--torch_dtype", dtype, "--bf16", "true",
                              "--learning_rate", str(LR), "--max_steps", "1", "--lr_scheduler_type", "constant",
                              "--weight_decay", "0", "--seed", "1", *extra)
    before = {k: v.detach().float().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    after = {k: v.detach().float() for k, v in trainer.model.named_parameters()}
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return trainer.model.dtype, before, after, loss


def moved_fraction(before, after) -> float:
    """Share of weights with |w| in [2^-6, 2^-5) that an update moved."""
    moved = total = 0
    for name, w in before.items():
        sel = (w.abs() >= 2 ** -6) & (w.abs() < 2 ** -5)
        moved += ((after[name] - w)[sel].abs() > LR / 2).sum().item()
        total += sel.sum().item()
    assert total > 1000
    return moved / total


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    start_once(tmp_path_factory, "modeling_one_step_runs")
    return {name: one_step(tmp_path_factory.mktemp(name), dtype, *extra) for name, dtype, extra in [
        ("bf16_weights", "bfloat16", ()), ("fp32_master", "float32", ()),
        ("fp32_master_plain_head", "float32", ("--padding_free", "false", "--fused_lm_head", "false",
                                               "--response_only_lm_head", "false"))]}


@RUNS
def test_a_tiny_update_survives_fp32_master_weights_and_is_lost_in_bf16(runs):
    dtype, before, after, _ = runs["bf16_weights"]
    assert dtype == torch.bfloat16 and moved_fraction(before, after) < 0.01
    dtype, before, after, _ = runs["fp32_master"]
    assert dtype == torch.float32 and moved_fraction(before, after) > 0.9


@RUNS
def test_fused_head_under_autocast_matches_the_plain_path(runs):
    """fp32 weights + bf16 autocast: the optimised path (padding-free, fused head) gives the plain loss."""
    fused, plain = runs["fp32_master"][3], runs["fp32_master_plain_head"][3]
    assert fused == pytest.approx(plain, rel=1e-2)
