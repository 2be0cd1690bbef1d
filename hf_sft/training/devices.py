"""Which GPUs the training process sees, and which one the eval worker gets.

Why: with one training process and several visible GPUs, transformers sets ``n_gpu =
torch.cuda.device_count()`` (training_args.py ``TrainingArguments._setup_devices``, branch
``DistributedType.NO``) and ``Trainer._wrap_model`` then wraps the model in ``nn.DataParallel``: the
padding-free row and its ``cu_seq_lens`` are scattered inconsistently, the microbatch doubles, a
replica lands on the eval GPU. So a single training process is shown its training GPU only
(``CUDA_VISIBLE_DEVICES``, set before CUDA is initialised: ``TrainingArguments.__post_init__`` already
touches ``self.device``), and the eval GPU's physical index is kept in ``EVAL_VISIBLE_ENV`` for the
eval worker, which inherits the environment and selects it (``hf_sft.generation.vllm.select_device``).

``eval_device: same`` (or ``cuda:0`` on a one-GPU machine) gives the worker the training GPU itself;
hf_sft.evaluation.colocation then sizes the engine to fit beside training.

Under DDP/FSDP/ZeRO (``WORLD_SIZE`` > 1) every rank trains on ``cuda:LOCAL_RANK`` and ``n_gpu`` is 1
already; visibility is left alone, and an ``eval_device`` that a rank trains on is refused.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from hf_sft.config import RecipeError

logger = logging.getLogger(__name__)

EVAL_VISIBLE_ENV = "HF_SFT_EVAL_CUDA_VISIBLE_DEVICES"
SAME = "same"  # eval_device: the engine shares the training GPU


def eval_shares_training_gpu(env=None) -> bool:
    """isolate_training_gpus gave the eval worker this process's own (single) GPU."""
    env = os.environ if env is None else env
    eval_gpu = env.get(EVAL_VISIBLE_ENV)
    return eval_gpu is not None and eval_gpu == env.get("CUDA_VISIBLE_DEVICES")


class DeviceError(RecipeError):
    """An eval_device that collides with training or does not exist."""


def _cuda_index(device: str | None) -> int | None:
    if not device or not device.startswith("cuda"):
        return None
    index = device.partition(":")[2] or "0"
    if not index.isdigit():
        raise DeviceError(f"eval_device must be 'cpu' or 'cuda:N', got {device!r}")
    return int(index)


def count_gpus_without_cuda_init() -> int:
    """GPUs visible under the current ``CUDA_VISIBLE_DEVICES``, counted without initialising CUDA here.

    ``torch.cuda.is_available()`` must not be asked: without ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` it calls
    ``torch._C._cuda_getDeviceCount()``, i.e. ``cudaGetDeviceCount`` -> ``cuInit`` (torch/cuda/__init__.py,
    ``is_available``), and the runtime reads ``CUDA_VISIBLE_DEVICES`` then, once: a later rewrite changes
    nothing for this process. NVML (``torch.cuda._device_count_nvml``, which re-parses the variable on every
    call) does not initialise CUDA. Where NVML is unavailable (it fails with a negative count), a child
    process counts with the runtime instead, so the runtime of this one still starts after the rewrite.
    """
    import torch

    if not torch.cuda._is_compiled():  # a CPU build of torch
        return 0
    count = torch.cuda._device_count_nvml()
    if count >= 0:
        return count
    logger.info("NVML could not count the GPUs: counting them in a child process, so CUDA is not initialised here")
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                         capture_output=True, text=True, timeout=300, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _visible_ids(env, count: int) -> list[str]:
    """Physical ids (indices or UUIDs) of the GPUs this process sees, in ``cuda:N`` order."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return ids[:count]


def isolate_training_gpus(eval_args, env=None) -> str | None:
    """Restrict this (training) process to its GPU(s) before CUDA starts; returns the new visibility.

    Call before ``TrainingArguments`` is built, and before anything in this process has initialised the
    CUDA runtime (tests/training/test_devices.py checks, at torch's lowest layer, what the first runtime
    call sees). GPUs are counted through NVML only (:func:`count_gpus_without_cuda_init`).
    """
    env = os.environ if env is None else env
    count = count_gpus_without_cuda_init()
    if count <= 0:
        return None
    # cuda:N and NVML index N name the same GPU only in PCI order; CUDA's default is fastest first
    # (CUDA_DEVICE_ORDER, CUDA C Programming Guide, "CUDA Environment Variables"). nvidia-smi numbers by PCI
    # bus too, so cuda:1 is nvidia-smi's GPU 1; the eval worker inherits the setting.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = _visible_ids(env, count)
    async_vllm = eval_args.eval_backend == "vllm" and eval_args.eval_mode == "async"
    same = async_vllm and eval_args.eval_device == SAME
    eval_index = _cuda_index(eval_args.eval_device) if async_vllm and not same else None
    if eval_index is not None and eval_index >= len(ids):
        raise DeviceError(f"eval_device is {eval_args.eval_device} but this process sees {len(ids)} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={visible or 'unset'}): use cuda:0..cuda:{len(ids) - 1}, or "
                          f"eval_device: same to share the training GPU")
    world = int(env.get("WORLD_SIZE", "1"))
    if same and world > 1:
        raise DeviceError("eval_device: same shares the GPU of a single training process; with several training "
                          "processes give the engine a GPU of its own (eval_device: cuda:N)")
    if world > 1:  # each rank trains on cuda:LOCAL_RANK (accelerate PartialState); n_gpu is already 1
        local = int(env.get("LOCAL_WORLD_SIZE", world))
        if eval_index is not None:
            if eval_index < local:
                raise DeviceError(f"eval_device {eval_args.eval_device} is the training GPU of local rank "
                                  f"{eval_index} ({local} training processes on cuda:0..cuda:{local - 1}): use "
                                  f"cuda:{local} or later for the eval engine")
            env[EVAL_VISIBLE_ENV] = ids[eval_index]
        return None
    if same or (len(ids) == 1 and eval_index == 0):  # one GPU for both: sized by hf_sft/evaluation/colocation.py
        env["CUDA_VISIBLE_DEVICES"] = ids[0]
        env[EVAL_VISIBLE_ENV] = ids[0]
        logger.info("One training process on GPU %s; the eval engine shares it (eval_device %s)%s", ids[0],
                    eval_args.eval_device, f", GPUs {','.join(ids[1:])} stay unused" if len(ids) > 1 else "")
        return ids[0]
    if len(ids) <= 1:
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


def _normal_uuid(uuid) -> str:
    """NVML says ``GPU-8c6b…``, ``torch.cuda.get_device_properties(i).uuid`` prints ``8c6b…``."""
    return str(uuid).strip().lower().removeprefix("gpu-")


def _nvml_uuids() -> list[str] | None:
    """UUIDs by NVML (= PCI bus) index, or None where NVML cannot be read (torch.cuda._raw_device_uuid_nvml)."""
    import torch

    try:
        return torch.cuda._raw_device_uuid_nvml()
    except (OSError, AttributeError):
        return None


def _uuid_of(physical: str | None, uuids: list[str] | None) -> str | None:
    """The UUID of a CUDA_VISIBLE_DEVICES entry (an index or a UUID prefix), when NVML can tell."""
    if not physical or not uuids:
        return None
    if physical.isdigit():
        return uuids[int(physical)] if int(physical) < len(uuids) else None
    matches = [u for u in uuids if _normal_uuid(u).startswith(_normal_uuid(physical))]
    return matches[0] if len(matches) == 1 else None


def check_training_gpu(device, env=None, *, nvml_uuids=None, runtime_uuid=None) -> str | None:
    """After the device is set up: training runs on the intended physical GPU; log it with the eval GPU.

    The intended GPU is the ``CUDA_VISIBLE_DEVICES`` entry of ``device`` (``cuda:LOCAL_RANK``), its UUID
    read from NVML; the actual one is what the CUDA runtime reports for ``device``. They differ when
    something initialised CUDA before :func:`isolate_training_gpus` rewrote the visibility. A run off
    CUDA returns None at once. ``nvml_uuids`` / ``runtime_uuid`` are the two readings (taken here when None).
    """
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    env = os.environ if env is None else env
    index = device.index or 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else None
    physical = ids[index] if ids and index < len(ids) else str(index)
    if runtime_uuid is None:
        runtime_uuid = torch.cuda.get_device_properties(device).uuid
    uuids = _nvml_uuids() if nvml_uuids is None else nvml_uuids
    intended = _uuid_of(physical, uuids)
    eval_physical = env.get(EVAL_VISIBLE_ENV)
    eval_uuid = _uuid_of(eval_physical, uuids)
    if intended is not None and _normal_uuid(intended) != _normal_uuid(runtime_uuid):
        raise DeviceError(f"training runs on GPU {_normal_uuid(runtime_uuid)}, not on GPU {physical} ({intended}) as "
                          f"CUDA_VISIBLE_DEVICES={visible} says: CUDA was initialised in this process before the "
                          "visibility was set (see hf_sft/training/devices.py), or CUDA_DEVICE_ORDER is not PCI_BUS_ID")
    shared = eval_physical is not None and eval_physical == physical
    if eval_uuid is not None and not shared and _normal_uuid(eval_uuid) == _normal_uuid(runtime_uuid):
        raise DeviceError(f"training runs on GPU {eval_physical} ({eval_uuid}), the GPU meant for the eval engine")
    line = (f"training on {device} = physical GPU {physical} (UUID {_normal_uuid(runtime_uuid)}"
            f"{', checked against NVML' if intended else ', NVML unreadable: not checked'}); "
            + ("eval engine: no GPU of its own" if eval_physical is None else
               f"eval engine on physical GPU {eval_physical} (UUID {_normal_uuid(eval_uuid) if eval_uuid else '?'})"
               + (", shared with training" if shared else "")))
    logger.info("GPU assignment: %s", line)
    return line
