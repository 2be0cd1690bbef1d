"""The callback's policies (latest / queue, bounded snapshots, drain) with a real vLLM engine on CPU; no mocks.

Tests that need vLLM skip where it is not installed; run them in the vLLM venv:
    /work/venv-vllm/bin/python -m pytest tests/evaluation/test_async_callback.py
Worker failures (killed, hung, out of memory, cannot start) are in test_worker.py.
"""

from __future__ import annotations

import json
import os

import pytest

from hf_sft.evaluation.async_callback import drain_budget_s
from tests.helpers import add_async_eval, eval_logs, have_vllm, make_demo_trainer, needs_vllm


@needs_vllm
@pytest.mark.slow
def test_every_scheduled_eval_arrives_in_order_with_the_weights_of_its_step(tmp_path):
    from hf_sft.generation.hf import HFGenerationBackend
    from hf_sft.evaluation.results import read_summaries

    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "6", "--eval_steps", "2")
    callback = add_async_eval(trainer, recipe, policy="queue", max_queued=1)
    trainer.train()

    logs = eval_logs(trainer)
    assert [e["eval_step"] for e in logs] == [0, 2, 4, 6]
    assert 1 <= callback.peak_slots <= callback.max_snapshots == 2  # the bounded queue waited, lost nothing
    assert all(r.status == "done" for r in callback.records.values())
    # Not blocking: the baseline's result is logged after training had moved on.
    assert logs[0]["step"] >= 1
    for e in logs:
        assert e["eval/stall_s"] >= 0 and e["eval/push_s"] >= 0 and "eval/accuracy" in e
    assert "eval/stall_fraction" in trainer.state.log_history[-1]
    assert [s["eval_step"] for s in read_summaries(trainer.args.output_dir)] == [0, 2, 4, 6]
    assert callback.worker is None and not callback.slots  # drained and closed

    # The step-6 eval saw the final weights: greedy responses equal hf generate on the trained model.
    logs_dir = os.path.join(trainer.args.output_dir, "results", "eval_logs")
    [final] = [f for f in os.listdir(logs_dir) if f.startswith("eval_step_6_")]
    records = [json.loads(line) for line in open(os.path.join(logs_dir, final))]
    spec = callback.spec
    hf = HFGenerationBackend(trainer.model, trainer.processing_class, batch_size=1, show_progress=False)
    expected = hf.generate(spec.problems.prompts, spec.sampling)
    assert [r["response"] for r in records] == [g.text for g in expected]


def test_without_vllm_the_recipe_fails_before_training(tmp_path):
    if have_vllm():
        pytest.skip("vLLM is installed here")
    from hf_sft.evaluation.from_recipe import build_async_eval_callback
    from hf_sft.generation.vllm import INSTALL_HINT

    trainer, recipe = make_demo_trainer(tmp_path, "--max_steps", "2")
    with pytest.raises(ImportError, match="hf-sft\\[vllm\\]") as err:
        build_async_eval_callback(trainer, *recipe)
    assert str(err.value) == INSTALL_HINT



def test_the_final_drain_stays_below_ddp_timeout_with_several_processes():
    assert drain_budget_s(3600.0, 1, 1800) == 3600.0  # one process: nobody waits on a collective
    assert drain_budget_s(None, 1, 1800) is None
    assert drain_budget_s(3600.0, 4, 1800) == 0.8 * 1800 - 60 < 1800
    assert drain_budget_s(None, 2, 1800) == 0.8 * 1800 - 60
    assert drain_budget_s(30.0, 2, 1800) == 30.0
