"""Which GPUs the training process sees, and which one the eval worker gets.

Why: with one training process and several visible GPUs, transformers sets ``n_gpu =
torch.cuda.device_count()`` (training_args.py ``TrainingArguments._setup_devices``, branch
``DistributedType.NO``) and ``Trainer._wrap_model`` then wraps the model in ``nn.DataParallel``: the
padding-free row and its ``cu_seq_lens`` are scattered inconsistently, the microbatch doubles, a
replica lands on the eval GPU. So a single training process is shown its training GPU only
(``CUDA_VISIBLE_DEVICES``, set before CUDA is initialised: ``TrainingArguments.__post_init__`` already
touches ``self.device``), and the eval GPU's physical index is kept in ``EVAL_VISIBLE_ENV`` for the
eval worker, which inherits the environment and selects it (``hf_sft.generation.vllm.select_device``).

Under DDP/FSDP/ZeRO (``WORLD_SIZE`` > 1) every rank trains on ``cuda:LOCAL_RANK`` and ``n_gpu`` is 1
already; visibility is left alone, and an ``eval_device`` that a rank trains on is refused.
"""

from __future__ import annotations

import logging
import os

from hf_sft.config import RecipeError

logger = logging.getLogger(__name__)

EVAL_VISIBLE_ENV = "HF_SFT_EVAL_CUDA_VISIBLE_DEVICES"


class DeviceError(RecipeError):
    """An eval_device that collides with training or does not exist."""


def _cuda_index(device: str | None) -> int | None:
    if not device or not device.startswith("cuda"):
        return None
    index = device.partition(":")[2] or "0"
    if not index.isdigit():
        raise DeviceError(f"eval_device must be 'cpu' or 'cuda:N', got {device!r}")
    return int(index)


def isolate_training_gpus(eval_args, env=None) -> str | None:
    """Restrict this (training) process to its GPU(s) before CUDA starts; returns the new visibility.

    Call before ``TrainingArguments`` is built. ``torch.cuda.device_count`` asks NVML when it can,
    which does not initialise CUDA, so the restriction still takes effect afterwards.
    """
    import torch

    env = os.environ if env is None else env
    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    ids = ids[:count]
    async_vllm = eval_args.eval_backend == "vllm" and eval_args.eval_mode == "async"
    eval_index = _cuda_index(eval_args.eval_device) if async_vllm else None
    if eval_index is not None and eval_index >= len(ids):
        raise DeviceError(f"eval_device is {eval_args.eval_device} but this process sees {len(ids)} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={visible or 'unset'}): use cuda:0..cuda:{len(ids) - 1}, or "
                          f"eval_backend: hf with one GPU")
    world = int(env.get("WORLD_SIZE", "1"))
    if world > 1:  # each rank trains on cuda:LOCAL_RANK (accelerate PartialState); n_gpu is already 1
        local = int(env.get("LOCAL_WORLD_SIZE", world))
        if eval_index is not None:
            if eval_index < local:
                raise DeviceError(f"eval_device {eval_args.eval_device} is the training GPU of local rank "
                                  f"{eval_index} ({local} training processes on cuda:0..cuda:{local - 1}): use "
                                  f"cuda:{local} or later for the eval engine")
            env[EVAL_VISIBLE_ENV] = ids[eval_index]
        return None
    if len(ids) <= 1:
        if eval_index is not None:
            raise DeviceError(f"eval_device {eval_args.eval_device} is the only GPU, which training uses: the "
                              "eval engine needs a GPU of its own (or eval_backend: hf)")
        return None
    train = next(i for i in range(len(ids)) if i != eval_index)
    env["CUDA_VISIBLE_DEVICES"] = ids[train]
    if eval_index is not None:
        env[EVAL_VISIBLE_ENV] = ids[eval_index]
    hidden = [ids[i] for i in range(len(ids)) if i != train]
    logger.info("One training process: it sees only GPU %s (CUDA_VISIBLE_DEVICES), not %s, so the Trainer does "
                "not wrap the model in DataParallel%s", ids[train], ",".join(hidden),
                f"; the eval worker gets GPU {ids[eval_index]}" if eval_index is not None else "")
    return ids[train]
