"""The accelerate configs say what accelerate does with them: each is read by accelerate's own parser and
launcher code (the environment its child processes get), then by the plugin those processes would build.

No GPU here, so nothing is launched; every step below is accelerate's or transformers' code, unmodified.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, patch_environment
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from hf_sft.training.trainer import reduce_gradients_in_fp32
from tests.helpers import REPO_ROOT

CONFIGS = sorted(Path(REPO_ROOT, "recipes", "accelerate_configs").glob("*.yaml")) + \
    [Path(REPO_ROOT, "accelerate_config.yaml")]


def _launch_args(path):
    """What ``accelerate launch --config_file path train.py`` decides (accelerate/commands/launch.py)."""
    args = launch_command_parser().parse_args(["--config_file", str(path), "hf_sft/train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    return args, defaults, mp_from_config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_leaves_a_gpu_to_the_engine(path):
    config = load_config_from_file(str(path))
    assert config.mixed_precision == "bf16" and config.num_machines == 1 and config.use_cpu is False
    if path.name == "accelerate_config.yaml":
        assert config.distributed_type == DistributedType.NO and config.num_processes == 1
    else:  # written for 4 GPUs: 3 training ranks, the last GPU for the engine
        assert config.num_processes == 3 and config.gpu_ids == "all"


def test_fsdp_checkpoints_activations_itself_and_reduces_gradients_in_fp32():
    path = Path(REPO_ROOT, "recipes", "accelerate_configs", "fsdp_eval_last.yaml")
    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.FSDP
    assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_activation_checkpointing"] is True
    args, *_ = _launch_args(path)
    env = prepare_multi_gpu_env(args)  # what each training process gets
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    fsdp_env = {k: v for k, v in env.items() if k.startswith("FSDP_")}
    with patch_environment(**fsdp_env):
        plugin = FullyShardedDataParallelPlugin()  # as Accelerator() builds it in a launched process
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing is True
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])  # what AcceleratorState does (state.py)
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16  # accelerate's choice, alone
    assert reduce_gradients_in_fp32(plugin)  # SFTTrainer.__init__ under FSDP
    assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16
    assert plugin.mixed_precision_policy.reduce_dtype == torch.float32
    assert not reduce_gradients_in_fp32(plugin)  # idempotent
    # The usage line turns the Trainer's checkpointing off: transformers refuses both at once.
    assert "--gradient_checkpointing false" in path.read_text()


def test_zero3_takes_accumulation_and_clipping_from_the_recipe():
    path = Path(REPO_ROOT, "recipes", "accelerate_configs", "zero3_eval_last.yaml")
    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.DEEPSPEED and config.deepspeed_config["zero_stage"] == 3
    assert "gradient_accumulation_steps" not in config.deepspeed_config
    assert "gradient_clipping" not in config.deepspeed_config
    args, defaults, mp_from_config = _launch_args(path)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command sets it
    _, env = prepare_deepspeed_cmd_env(args)
    # Unset, accelerate's DeepSpeedPlugin takes "auto" for both (dataclasses.py, DeepSpeedPlugin.__post_init__),
    # which transformers fills from gradient_accumulation_steps and max_grad_norm.
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env and "ACCELERATE_GRADIENT_CLIPPING" not in env
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"


def test_ddp_config_is_plain_multi_gpu():
    path = Path(REPO_ROOT, "recipes", "accelerate_configs", "multi_gpu_eval_last.yaml")
    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.MULTI_GPU
    args, *_ = _launch_args(path)
    env = prepare_multi_gpu_env(args)
    assert "ACCELERATE_USE_FSDP" not in env and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
