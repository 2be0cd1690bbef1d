"""Simulated GPUs for a CPU build of torch, at torch's lowest Python-visible layer (tests/training/test_devices.py).

Active only when ``HF_SFT_FAKE_GPUS`` (the number of physical GPUs) is set; put this directory first on
``PYTHONPATH`` and Python imports it at start-up (``site``), before the script runs.

- NVML: ``torch.cuda._raw_device_count_nvml`` returns that number, so torch's own ``_device_count_nvml``
  applies ``CUDA_VISIBLE_DEVICES`` to it as on a real machine (it re-reads the variable on every call);
  -1 (NVML unavailable) with ``HF_SFT_FAKE_NVML=fail``.
- The CUDA runtime: ``torch._C._cuda_getDeviceCount`` and ``torch._C._cuda_init`` (what ``is_available``
  without ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, ``device_count`` after NVML fails, and ``_lazy_init`` call;
  torch/cuda/__init__.py) are recorders: the first call appends the visibility it saw to
  ``HF_SFT_FAKE_GPUS_RECORD`` (one JSON line) and ends the process with exit code ``HALT``, because this
  is the moment a real runtime would read ``CUDA_VISIBLE_DEVICES`` once and for all. Only the training
  process (``sys.argv[0]`` ends with ``train.py``) stops; any other (accelerate's launcher, a child that
  counts GPUs) records the call and carries on, ``_cuda_getDeviceCount`` answering what a runtime started
  now would see.
- ``torch._C._accelerator_getAccelerator`` (the compile-time check behind ``torch.accelerator``) says
  cuda, as a CUDA build does without touching the driver; accelerate's launcher uses it to decide that
  ``gpu_ids`` becomes ``CUDA_VISIBLE_DEVICES`` (accelerate/utils/launch.py, ``prepare_simple_launcher_cmd_env``).
"""

import os

HALT = 87

if os.environ.get("HF_SFT_FAKE_GPUS"):
    import json
    import sys
    import traceback

    import torch
    import torch.cuda

    _physical = int(os.environ["HF_SFT_FAKE_GPUS"])
    _record = os.environ["HF_SFT_FAKE_GPUS_RECORD"]

    def _runtime_count():
        """What cudaGetDeviceCount answers in a process whose runtime starts now: the visible prefix."""
        count = 0
        for index in torch.cuda._parse_visible_devices():
            if not isinstance(index, int) or index >= _physical:
                break
            count += 1
        return count

    def _recorder(entry):
        def first_runtime_call(*args, **kwargs):
            frames = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]]
            seen = {"entry": entry, "argv": sys.argv,
                    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "HF_SFT_EVAL_CUDA_VISIBLE_DEVICES": os.environ.get("HF_SFT_EVAL_CUDA_VISIBLE_DEVICES"),
                    "stack": frames[-12:]}
            with open(_record, "a") as out:
                out.write(json.dumps(seen) + "\n")
            if not sys.argv or not sys.argv[0].endswith("train.py"):
                return _runtime_count() if entry.endswith("getDeviceCount") else None
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(HALT)  # not SystemExit: nothing on the way up may catch it and carry on

        return first_runtime_call

    # HF_SFT_FAKE_NVML=fail: NVML cannot be loaded (torch then gets -1 and would fall back to the runtime).
    _nvml = -1 if os.environ.get("HF_SFT_FAKE_NVML") == "fail" else _physical
    torch.cuda._raw_device_count_nvml = lambda: _nvml
    torch._C._cuda_getDeviceCount = _recorder("torch._C._cuda_getDeviceCount")
    torch._C._cuda_init = _recorder("torch._C._cuda_init")
    torch._C._accelerator_getAccelerator = lambda: torch.device("cuda")
    # Imported by name where torch.cuda._is_compiled() (torch/_dynamo/device_interface.py): runtime calls too.
    for _name in ("_cuda_getCurrentRawStream",):
        setattr(torch._C, _name, _recorder(f"torch._C.{_name}"))
