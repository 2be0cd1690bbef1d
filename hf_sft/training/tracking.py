"""Experiment trackers with two x-axes: ``train/*`` against ``train_step``, ``eval/*`` against ``eval_step``.

Why not the stock callbacks: transformers' ``WandbCallback`` and ``TensorBoardCallback`` (5.19) pass every
log through ``rewrite_logs``, which prefixes each key that does not start with ``eval_`` with ``train/``
and plots everything against ``train/global_step``. The eval callback logs ``{"eval/accuracy": ...,
"eval_step": N}``, which would land as ``train/eval/accuracy`` and ``eval/step``. The subclasses here keep
what the stock callbacks do (config upload, ``WANDB_WATCH``, final model artifacts, the TensorBoard log
dir), fix the names and axes, give wandb runs a timestamped name, print the run's link (or, offline, the
``wandb sync`` command), and add GPU memory and utilisation to the training logs when on GPU.

``use_project_trackers(trainer)`` swaps them in, at the stock callbacks' places in the callback list
(trackers must see ``on_train_begin`` before the eval callback logs the step-0 baseline).
"""

from __future__ import annotations

import logging
import os
import time

from transformers.integrations import TensorBoardCallback, WandbCallback
from transformers.integrations.integration_utils import default_logdir

logger = logging.getLogger(__name__)

TRAIN_AXIS, EVAL_AXIS = "train_step", "eval_step"
# End-of-training figures: one value per run, so wandb keeps them in the run summary, not the history.
SUMMARY_ONLY = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def is_eval_log(logs: dict) -> bool:
    return EVAL_AXIS in logs or any(k.startswith(("eval/", "eval_")) for k in logs)


def tracker_metrics(logs: dict, global_step: int) -> tuple[str, dict]:
    """Trainer logs -> (axis name, {name: value}) with the axis value included under its own name."""
    if is_eval_log(logs):
        out = {}
        for k, v in logs.items():
            if k == EVAL_AXIS or not isinstance(v, (int, float)):
                continue
            name = k if k.startswith("eval/") else "eval/" + k.removeprefix("eval_")
            out[name] = v
        out[EVAL_AXIS] = int(logs.get(EVAL_AXIS, global_step))
        return EVAL_AXIS, out
    out = {f"train/{k}": v for k, v in logs.items()
           if isinstance(v, (int, float)) and k not in SUMMARY_ONLY and k != "step"}
    out.update(gpu_metrics())
    out[TRAIN_AXIS] = int(global_step)
    return TRAIN_AXIS, out


def gpu_metrics() -> dict:
    """Memory (GiB) and utilisation (%) per visible GPU; empty on CPU. Utilisation needs pynvml."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    out = {}
    for i in range(torch.cuda.device_count()):
        out[f"system/gpu{i}_memory_allocated_gib"] = torch.cuda.memory_allocated(i) / 2**30
        out[f"system/gpu{i}_memory_reserved_gib"] = torch.cuda.memory_reserved(i) / 2**30
        out[f"system/gpu{i}_max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(i) / 2**30
        try:
            out[f"system/gpu{i}_utilization_pct"] = float(torch.cuda.utilization(i))
        except Exception:  # no pynvml / NVML: memory is still worth logging
            pass
    return out


def timestamped_run_name(args) -> str:
    """``<run_name or output_dir's name>-YYYYmmdd-HHMMSS``: re-runs of one recipe stay distinguishable."""
    base = args.run_name if args.run_name and args.run_name != args.output_dir else None
    base = base or os.path.basename(os.path.normpath(args.output_dir or "run")) or "run"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


class WandbAxesCallback(WandbCallback):
    """``WandbCallback`` with train/eval axes, a timestamped name and a printed link."""

    def setup(self, args, state, model, **kwargs):
        """The stock setup minus its ``define_metric("*", step_metric="train/global_step")``, which
        would claim every key (the initial-model artifact of ``WANDB_LOG_MODEL`` is not logged)."""
        if self._wandb is None:
            return
        self._initialized = True
        if not state.is_world_process_zero:
            return
        wandb = self._wandb
        if wandb.run is None:
            directory = os.getenv("WANDB_DIR") or args.output_dir
            os.makedirs(directory, exist_ok=True)
            wandb.init(project=os.getenv("WANDB_PROJECT", "hf-sft"), name=timestamped_run_name(args), dir=directory)
        config = args.to_dict()
        if getattr(model, "config", None) is not None:
            model_config = model.config if isinstance(model.config, dict) else model.config.to_dict()
            config = {**model_config, **config}
        if hasattr(model, "num_parameters"):
            config["model/num_parameters"] = model.num_parameters()
        wandb.config.update(config, allow_val_change=True)
        for axis, pattern in ((TRAIN_AXIS, "train/*"), (TRAIN_AXIS, "system/*"), (EVAL_AXIS, "eval/*")):
            wandb.define_metric(axis)
            wandb.define_metric(pattern, step_metric=axis)
        watch = os.getenv("WANDB_WATCH", "false")
        if watch in ("all", "parameters", "gradients") and model is not None:
            wandb.watch(model, log=watch, log_freq=max(100, args.logging_steps))
        run = wandb.run
        if run.url:
            print(f"wandb: run {run.name}: {run.url}", flush=True)
        else:
            run_dir = os.path.dirname(run.dir.rstrip("/"))
            print(f"wandb: offline run {run.name} in {run_dir}; upload it with: wandb sync {run_dir}", flush=True)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if self._wandb is None:
            return
        if not self._initialized:
            self.setup(args, state, model)
        if not state.is_world_process_zero or not logs:
            return
        for k in SUMMARY_ONLY:
            if k in logs:
                self._wandb.run.summary[f"train/{k}"] = logs[k]
        _, metrics = tracker_metrics(logs, state.global_step)
        self._wandb.log(metrics)


class TensorBoardAxesCallback(TensorBoardCallback):
    """``TensorBoardCallback`` with the same names; eval scalars are written at their eval step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.tb_writer is None:
            self.logging_dir = self.logging_dir or os.path.join(args.output_dir, default_logdir())
            self._init_summary_writer(args)
        axis, metrics = tracker_metrics(logs, state.global_step)
        step = metrics.pop(axis)
        for k in SUMMARY_ONLY:
            if k in logs:
                metrics[f"train/{k}"] = logs[k]
        for k, v in metrics.items():
            self.tb_writer.add_scalar(k, v, step)
        self.tb_writer.flush()


REPLACEMENTS = ((WandbCallback, WandbAxesCallback), (TensorBoardCallback, TensorBoardAxesCallback))


def use_project_trackers(trainer) -> None:
    """Replace the stock wandb/tensorboard callbacks the Trainer built from ``report_to``, in place."""
    callbacks = trainer.callback_handler.callbacks
    for i, cb in enumerate(callbacks):
        for stock, ours in REPLACEMENTS:
            if type(cb) is stock:
                callbacks[i] = ours()
