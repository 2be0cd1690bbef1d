"""One training process next to an eval GPU: it must see one GPU, and only it, from the CUDA runtime's first call.

Two levels. The subprocess tests run ``hf_sft/train.py recipes/full.yaml`` with torch's lowest layer
replaced (tests/training/fake_gpus/sitecustomize.py: NVML counts N GPUs, and the CUDA runtime's entry points
record ``CUDA_VISIBLE_DEVICES`` at their first call, then end the process): what that first call sees is
what a real runtime would keep for the whole run. The in-process tests simulate the GPUs at the NVML layer
too (``torch.cuda._raw_device_count_nvml``; torch's own ``_device_count_nvml`` applies the variable) with
``is_available`` answering yes, and run transformers' real ``TrainingArguments._setup_devices`` (branch
``DistributedType.NO``: ``n_gpu = torch.cuda.device_count()``) and ``Trainer._wrap_model``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_sft.config import parse_recipe
from hf_sft.training.devices import EVAL_VISIBLE_ENV, DeviceError, check_training_gpu, isolate_training_gpus
from tests.helpers import REPO_ROOT, make_tiny_qwen2

DEMO = os.path.join(REPO_ROOT, "recipes", "demo.yaml")
FAKE_GPUS = os.path.join(REPO_ROOT, "tests", "training", "fake_gpus")
HALT = 87  # fake_gpus/sitecustomize.py: the training process reached its first CUDA runtime call


@pytest.fixture
def two_gpus(monkeypatch):
    for key in ("CUDA_VISIBLE_DEVICES", EVAL_VISIBLE_ENV, "WORLD_SIZE", "LOCAL_WORLD_SIZE", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(key, raising=False)

    import torch._dynamo  # noqa: F401 - imported by transformers anyway; it must not see a "CUDA build"

    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: 2)  # device_count goes through NVML
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # it was built believing in two GPUs


def _args(tmp_path, hook, *extra):
    argv = [DEMO, "--use_cpu", "false", "--output_dir", str(tmp_path), "--eval_backend", "vllm",
            "--eval_device", "cuda:1", *extra]
    return parse_recipe(argv, before_training_args=hook)


def _wrapped(training_args, bpe_tokenizer):
    from hf_sft.training.trainer import SFTTrainer

    training_args.__dict__["_setup_devices"] = torch.device("cpu")  # n_gpu is decided; the model stays on CPU
    trainer = SFTTrainer(model=make_tiny_qwen2(len(bpe_tokenizer)), args=training_args, processing_class=bpe_tokenizer)
    return trainer._wrap_model(trainer.model), trainer.model


def test_without_isolation_two_gpus_mean_dataparallel(two_gpus, tmp_path):
    """The failure being fixed, reached through transformers' own code: n_gpu 2, nn.DataParallel."""
    from transformers.training_args import ParallelMode

    *_, training_args = _args(tmp_path, None)
    assert training_args.n_gpu == 2
    assert training_args.parallel_mode == ParallelMode.NOT_DISTRIBUTED  # "uses torch.nn.DataParallel"


def test_one_training_process_sees_one_gpu_and_the_worker_gets_cuda1(two_gpus, tmp_path, bpe_tokenizer):
    *_, training_args = _args(tmp_path, lambda m, d, e: isolate_training_gpus(e))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and os.environ[EVAL_VISIBLE_ENV] == "1"
    assert training_args.n_gpu == 1
    wrapped, model = _wrapped(training_args, bpe_tokenizer)
    assert wrapped is model and not isinstance(wrapped, nn.DataParallel)

    from hf_sft.generation.vllm import select_device

    select_device("cuda:1")  # in the spawned worker, which inherits the trainer's environment
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_physical_indices_follow_an_existing_visibility(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: 8)  # torch drops ids past the machine's count
    ev = SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:0")
    assert isolate_training_gpus(ev) == "6"
    assert os.environ[EVAL_VISIBLE_ENV] == "4"


def test_eval_device_that_a_rank_trains_on_is_refused(two_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: 3)
    with pytest.raises(DeviceError, match="training GPU of local rank 1"):
        isolate_training_gpus(SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:1"))
    isolate_training_gpus(SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:2"))
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and os.environ[EVAL_VISIBLE_ENV] == "2"
    with pytest.raises(DeviceError, match="sees 3 GPU"):
        isolate_training_gpus(SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:3"))


# ---------------------------------------------------------------- the first CUDA runtime call, in a real train.py


def _first_runtime_call(tmp_path, *args, physical=2, env=None, launch=(), recipe="recipes/full.yaml"):
    """Run train.py (under ``launch``, e.g. accelerate's launcher) on simulated GPUs up to its first CUDA
    runtime call; returns what that call saw in the training process."""
    record = tmp_path / "first_runtime_call.jsonl"
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("CUDA_VISIBLE_DEVICES", EVAL_VISIBLE_ENV, "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK",
                            "LOCAL_RANK", "CUDA_DEVICE_ORDER", "PYTORCH_NVML_BASED_CUDA_CHECK")}
    run_env.update({"HF_SFT_FAKE_GPUS": str(physical), "HF_SFT_FAKE_GPUS_RECORD": str(record),
                    "PYTHONPATH": os.pathsep.join([FAKE_GPUS, REPO_ROOT]), **(env or {})})
    cmd = [sys.executable, *launch, "hf_sft/train.py", recipe, "--output_dir", str(tmp_path / "out"),
           *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=run_env, capture_output=True, text=True, timeout=600)
    halted = proc.returncode == HALT or (launch and f"returned non-zero exit status {HALT}" in proc.stderr)
    assert halted, f"exit {proc.returncode}, never reached a CUDA runtime call:\n{proc.stderr[-4000:]}"
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    training = [c for c in calls if c["argv"][0].endswith("train.py")]
    assert len(training) == 1, calls
    return training[0]


def test_first_runtime_call_sees_only_gpu0_when_the_engine_takes_cuda1(tmp_path):
    seen = _first_runtime_call(tmp_path, "--eval_device", "cuda:1")
    assert (seen["CUDA_VISIBLE_DEVICES"], seen[EVAL_VISIBLE_ENV]) == ("0", "1"), seen
    # It is the device setup (TrainingArguments), after the isolation, not the isolation itself.
    assert not any("isolate_training_gpus" in frame for frame in seen["stack"]), seen["stack"]


def test_first_runtime_call_sees_only_gpu1_when_the_engine_takes_cuda0(tmp_path):
    seen = _first_runtime_call(tmp_path, "--eval_device", "cuda:0")
    assert (seen["CUDA_VISIBLE_DEVICES"], seen[EVAL_VISIBLE_ENV]) == ("1", "0"), seen


def test_a_visibility_list_set_before_the_start_is_honoured(tmp_path):
    """CUDA_VISIBLE_DEVICES=3,1 on a 4-GPU machine: cuda:1 is physical 1, so training gets physical 3."""
    seen = _first_runtime_call(tmp_path, "--eval_device", "cuda:1", physical=4, env={"CUDA_VISIBLE_DEVICES": "3,1"})
    assert (seen["CUDA_VISIBLE_DEVICES"], seen[EVAL_VISIBLE_ENV]) == ("3", "1"), seen


def test_accelerate_launch_with_a_gpu_subset(tmp_path):
    """``gpu_ids: 3,1`` becomes the child's CUDA_VISIBLE_DEVICES in accelerate's own launcher."""
    launch = ("-m", "accelerate.commands.launch", "--config_file", "accelerate_config.yaml", "--gpu_ids", "3,1")
    seen = _first_runtime_call(tmp_path, "--eval_device", "cuda:1", physical=4, launch=launch)
    assert (seen["CUDA_VISIBLE_DEVICES"], seen[EVAL_VISIBLE_ENV]) == ("3", "1"), seen


def test_without_nvml_a_child_process_counts_the_gpus(tmp_path):
    seen = _first_runtime_call(tmp_path, "--eval_device", "cuda:1", env={"HF_SFT_FAKE_NVML": "fail"})
    assert (seen["CUDA_VISIBLE_DEVICES"], seen[EVAL_VISIBLE_ENV]) == ("0", "1"), seen


def test_one_gpu_recipe_shares_the_only_gpu_with_the_engine(tmp_path):
    seen = _first_runtime_call(tmp_path, physical=1, recipe="recipes/full_1gpu.yaml")
    assert (seen["CUDA_VISIBLE_DEVICES"], seen[EVAL_VISIBLE_ENV]) == ("0", "0"), seen


def test_same_takes_the_first_gpu_for_both(two_gpus):
    from hf_sft.training.devices import eval_shares_training_gpu

    ev = SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="same")
    assert isolate_training_gpus(ev) == "0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" == os.environ[EVAL_VISIBLE_ENV] and eval_shares_training_gpu()


def test_cuda0_on_a_one_gpu_machine_is_shared_not_refused(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: 1)
    ev = SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:0")
    assert isolate_training_gpus(ev) == "0" and os.environ[EVAL_VISIBLE_ENV] == "0"
    with pytest.raises(DeviceError, match="sees 1 GPU.*eval_device: same"):
        isolate_training_gpus(SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:1"))


def test_same_is_refused_with_several_training_processes(two_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DeviceError, match="single training process"):
        isolate_training_gpus(SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="same"))


# ---------------------------------------------------------------- after the device setup: the UUID check

UUIDS = ["GPU-aaaa0000-0000-0000-0000-000000000000", "GPU-bbbb1111-1111-1111-1111-111111111111"]


def test_uuid_check_passes_and_names_both_gpus():
    env = {"CUDA_VISIBLE_DEVICES": "1", EVAL_VISIBLE_ENV: "0"}
    line = check_training_gpu(torch.device("cuda", 0), env, nvml_uuids=UUIDS, runtime_uuid="bbbb1111-1111-1111-1111-111111111111")
    assert "physical GPU 1 (UUID bbbb1111" in line and "checked against NVML" in line
    assert "eval engine on physical GPU 0 (UUID aaaa0000" in line


def test_uuid_check_refuses_a_process_that_initialised_cuda_too_early():
    """The failure of issue 18: visibility says GPU 1, but the runtime kept both GPUs and cuda:0 is GPU 0."""
    env = {"CUDA_VISIBLE_DEVICES": "1", EVAL_VISIBLE_ENV: "0"}
    with pytest.raises(DeviceError, match="not on GPU 1 .*initialised in this process before"):
        check_training_gpu(torch.device("cuda", 0), env, nvml_uuids=UUIDS, runtime_uuid=UUIDS[0].lower()[4:])


def test_uuid_check_is_skipped_off_cuda():
    assert check_training_gpu(torch.device("cpu"), {}) is None
