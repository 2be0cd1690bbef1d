"""One training process next to an eval GPU: it must see one GPU, so the Trainer never wraps it in DataParallel.

The GPUs are simulated by patching ``torch.cuda`` the way the CUDA runtime behaves (``device_count``
honours ``CUDA_VISIBLE_DEVICES``); everything else is transformers' real ``TrainingArguments._setup_devices``
(branch ``DistributedType.NO``: ``n_gpu = torch.cuda.device_count()``) and ``Trainer._wrap_model``.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_sft.config import parse_recipe
from hf_sft.training.devices import EVAL_VISIBLE_ENV, DeviceError, isolate_training_gpus
from tests.helpers import REPO_ROOT, make_tiny_qwen2

DEMO = os.path.join(REPO_ROOT, "recipes", "demo.yaml")


@pytest.fixture
def two_gpus(monkeypatch):
    for key in ("CUDA_VISIBLE_DEVICES", EVAL_VISIBLE_ENV, "WORLD_SIZE", "LOCAL_WORLD_SIZE", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(key, raising=False)

    def device_count():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return len(visible.split(",")) if visible else 2

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", device_count)
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
    ev = SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:0")
    assert isolate_training_gpus(ev) == "6"
    assert os.environ[EVAL_VISIBLE_ENV] == "4"


def test_eval_device_that_a_rank_trains_on_is_refused(two_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    with pytest.raises(DeviceError, match="training GPU of local rank 1"):
        isolate_training_gpus(SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:1"))
    isolate_training_gpus(SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:2"))
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and os.environ[EVAL_VISIBLE_ENV] == "2"
    with pytest.raises(DeviceError, match="sees 3 GPU"):
        isolate_training_gpus(SimpleNamespace(eval_backend="vllm", eval_mode="async", eval_device="cuda:3"))
