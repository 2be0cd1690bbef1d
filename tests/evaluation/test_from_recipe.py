"""Evaluation that cannot deadlock or time out a multi-process run (issue 11, point 5).

FSDP and ZeRO-3 need GPUs (on CPU accelerate runs them as DDP), so the refusal is checked on the
decision function train.py calls with the trainer's own ``weights_are_sharded()``.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from hf_sft.evaluation.async_callback import drain_budget_s
from hf_sft.config import RecipeError
from hf_sft.train import check_eval_backend_for_parallelism


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


def test_the_final_drain_stays_below_ddp_timeout_with_several_processes():
    assert drain_budget_s(3600.0, 1, 1800) == 3600.0  # one process: nobody waits on a collective
    assert drain_budget_s(None, 1, 1800) is None
    assert drain_budget_s(3600.0, 4, 1800) == 0.8 * 1800 - 60 < 1800
    assert drain_budget_s(None, 2, 1800) == 0.8 * 1800 - 60
    assert drain_budget_s(30.0, 2, 1800) == 30.0
