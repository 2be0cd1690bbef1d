"""Evaluation during training, as a TrainerCallback: the trainer's loop stays the Trainer's own.

At step 0 (the baseline), every `eval_steps`, and once more at the end if the last step was not
an eval step, the callback evaluates the live policy by generation and logs `eval/*` metrics with
the training step. This is the blocking variant (`eval_backend: hf`); the vLLM variant hands the
weights to a worker process and returns.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from hf_sft.evaluation.runner import EvalProblems, run_evaluation, summary_to_metrics
from hf_sft.generation.base import GenerationBackend, SamplingSettings
from hf_sft.evaluation.results import completed_eval_steps

logger = logging.getLogger(__name__)


def log_side_metrics(trainer, metrics: dict) -> None:
    """``trainer.log`` from inside a callback, without eating the step's own training log.

    ``Trainer.log`` resets ``control.should_log``; called from ``on_step_end`` at a logging step it
    would drop that step's loss from ``log_history`` (and the trackers). Keep the flag as it was.
    """
    should_log = trainer.control.should_log
    trainer.log(metrics)
    trainer.control.should_log = should_log


def should_evaluate(step: int, eval_steps: int | None, baseline: bool) -> bool:
    if step == 0:
        return baseline
    return bool(eval_steps) and step % eval_steps == 0


class GenerationEvalCallback(TrainerCallback):
    """Evaluates in the training process, on the main process only, with a given backend."""

    def __init__(self, trainer, backend: GenerationBackend, problems: EvalProblems, sampling: SamplingSettings,
                 grader, *, eval_steps: int | None, baseline: bool = True, reward_fn: str = "r1_zero",
                 model_name: str = ""):
        self.trainer = trainer
        self.backend = backend
        self.problems = problems
        self.sampling = sampling
        self.grader = grader
        self.eval_steps = eval_steps
        self.baseline = baseline
        self.reward_fn = reward_fn
        self.model_name = model_name
        self.done_steps: set[int] = set()
        self.summaries: list[dict] = []

    def _evaluate(self, step: int) -> None:
        if step in self.done_steps or not self.trainer.is_world_process_zero():
            return
        self.done_steps.add(step)
        summary = run_evaluation(self.backend, self.problems, self.sampling, self.grader, eval_step=step,
                                 output_dir=self.trainer.args.output_dir, model_name=self.model_name,
                                 reward_fn=self.reward_fn)
        self.summaries.append(summary)
        log_side_metrics(self.trainer, {**summary_to_metrics(summary), "eval_step": step})

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run already has results for the steps it evaluated before it stopped: keep them,
        # do not evaluate those steps again (training is deterministic, so they are the same steps).
        self.done_steps |= completed_eval_steps(args.output_dir)
        if should_evaluate(state.global_step, self.eval_steps, self.baseline):
            self._evaluate(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > 0 and should_evaluate(state.global_step, self.eval_steps, self.baseline):
            self._evaluate(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        finished = state.max_steps and state.global_step >= state.max_steps
        if self.eval_steps and finished and state.global_step not in self.done_steps:
            self._evaluate(state.global_step)
