"""One GPU for training and the vLLM eval engine: how much of it the engine may take, decided before training.

vLLM sizes itself from a share of the device, ``gpu_memory_utilization``, and refuses to start unless the
memory free at its start-up is at least that share of the total (vllm/v1/worker/utils.py, ``request_memory``,
called from ``Worker.init_device`` whatever the KV cache setting). Next to a trainer, the fixed 0.85 of a
dedicated eval GPU fails that check, and would leave training nothing. So the share is computed here, in the
training process, from ``torch.cuda.mem_get_info`` once the model is on the GPU:

    engine budget = free now - what training will still allocate - headroom
    what training will still allocate = gradients + AdamW's two moments (3 x the trainable parameters' bytes;
        they appear at the first optimizer step, after the step-0 eval has started the engine)
    headroom = eval_colocate_headroom_bytes (activations, allocator fragmentation); default 10% of the GPU
    gpu_memory_utilization = engine budget / total

The engine starts while ``free >= budget`` (the check is met by construction), and training never has less
than its headroom once it has grown. Inside its budget vLLM takes its weights, its profiled activations and
CUDA graphs, and gives the rest to the KV cache (``Worker.determine_available_memory``), unless
``eval_vllm_kv_cache_memory_bytes`` fixes the KV cache, which must then fit too. A budget that does not hold
the engine's weights, its overhead (an estimate, ``ENGINE_OVERHEAD_BYTES``) and one full-length sequence of KV
cache is refused with the keys to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hf_sft.config import RecipeError

logger = logging.getLogger(__name__)

GiB = 1 << 30
# vLLM's own allocations besides weights and KV cache: the worker's CUDA context (~0.5 GiB), the profile
# run's activations and sampler logits for max_num_batched_tokens, CUDA graphs. An estimate, not a
# measurement (no GPU run yet); vLLM measures the real value inside its budget.
ENGINE_OVERHEAD_BYTES = 3 * GiB


class ColocationError(RecipeError):
    """Training and the eval engine do not both fit on the one GPU."""


@dataclass(frozen=True)
class ColocationPlan:
    gpu_memory_utilization: float
    engine_budget_bytes: int
    kv_cache_memory_bytes: int | None  # None: vLLM gives the KV cache what is left of its budget
    explanation: str


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """K and V of every layer for one token (decoder-only transformers: layers x kv heads x head dim)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def training_growth_bytes(model) -> int:
    """What training allocates after the model is on the GPU: a gradient and two AdamW moments per trainable
    parameter, in the parameter's dtype (fp32 master weights: 12 bytes per parameter)."""
    return sum(3 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def plan_colocation(*, free: int, total: int, training_growth: int, headroom: int | None, engine_weights: int,
                    min_kv_bytes: int, kv_cache_bytes: int | None = None,
                    engine_overhead: int = ENGINE_OVERHEAD_BYTES) -> ColocationPlan:
    """The arithmetic of the module docstring; every quantity in bytes."""
    headroom = int(0.10 * total) if headroom is None else headroom
    budget = free - training_growth - headroom
    need_kv = kv_cache_bytes if kv_cache_bytes is not None else min_kv_bytes
    need = engine_weights + engine_overhead + need_kv
    terms = (f"free {free / GiB:.1f} GiB of {total / GiB:.1f} GiB - training's gradients and AdamW moments still to "
             f"come {training_growth / GiB:.1f} GiB - headroom {headroom / GiB:.1f} GiB = engine budget "
             f"{budget / GiB:.1f} GiB")
    if budget < need:
        kv_what = (f"the KV cache asked for ({kv_cache_bytes / GiB:.2f} GiB, eval_vllm_kv_cache_memory_bytes)"
                   if kv_cache_bytes is not None else f"one full-length sequence of KV cache ({min_kv_bytes / GiB:.2f} GiB)")
        raise ColocationError(
            f"training and the vLLM eval engine do not fit on one GPU: {terms}, but the engine needs its weights "
            f"({engine_weights / GiB:.1f} GiB) + about {engine_overhead / GiB:.0f} GiB of its own + {kv_what} = "
            f"{need / GiB:.1f} GiB. Change one of: eval_vllm_kv_cache_memory_bytes (smaller), "
            "eval_vllm_max_model_len (shorter), eval_colocate_headroom_bytes (smaller), per_device_train_batch_size "
            "or torch_dtype (less training memory), eval_device (a GPU of its own), or eval_backend: hf")
    utilization = int(budget / total * 1000) / 1000  # rounded down: vLLM asks for ceil(total x utilization)
    kv = "vLLM gives the KV cache the rest after its weights and profiled activations" if kv_cache_bytes is None \
        else f"KV cache fixed at {kv_cache_bytes / GiB:.2f} GiB (eval_vllm_kv_cache_memory_bytes)"
    explanation = (f"{terms} -> gpu_memory_utilization {utilization:.3f} (vLLM starts only if that share of the GPU "
                   f"is free at its start-up; it is, by construction); engine weights {engine_weights / GiB:.1f} GiB; {kv}")
    return ColocationPlan(utilization, budget, kv_cache_bytes, explanation)


def colocate_engine(trainer, engine, eval_args, engine_weights: int) -> ColocationPlan:
    """Size ``engine`` (EngineOptions, changed in place) to share the training GPU; log why; refuse what cannot fit."""
    import torch

    device = trainer.args.device
    free, total = torch.cuda.mem_get_info(device)
    config = trainer.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    dtype_bytes = getattr(torch, engine.dtype).itemsize if isinstance(engine.dtype, str) and engine.dtype != "auto" \
        else 2
    max_len = engine.max_model_len or getattr(config, "max_position_embeddings", 4096)
    plan = plan_colocation(free=free, total=total, training_growth=training_growth_bytes(trainer.model),
                           headroom=eval_args.eval_colocate_headroom_bytes, engine_weights=engine_weights,
                           min_kv_bytes=max_len * kv_bytes_per_token(config, dtype_bytes),
                           kv_cache_bytes=engine.kv_cache_memory_bytes)
    engine.gpu_memory_utilization = plan.gpu_memory_utilization
    logger.info("eval engine shares the training GPU (%s): %s", device, plan.explanation)
    return plan
