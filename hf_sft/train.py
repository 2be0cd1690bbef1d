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

from transformers import set_seed

from hf_sft.config import RecipeError, parse_recipe
from hf_sft.core import pad_token_id
from hf_sft.data.loading import prepare_train_dataset
from hf_sft.evaluation.from_recipe import add_eval_callback, check_shared_memory_before_work, describe_eval
from hf_sft.training.devices import check_training_gpu, isolate_training_gpus
from hf_sft.training.modeling import load_model, load_tokenizer, resolve_dtype
from hf_sft.training.preflight import check_before_work
from hf_sft.training.checkpoints import latest_complete_checkpoint
from hf_sft.training.console import quiet_trainer, setup_training_logging
from hf_sft.training.preemption import PreemptionCallback
from hf_sft.training.rank_exit import exit_rank, wait_for_every_rank
from hf_sft.reporting.run_report import build_run_report
from hf_sft.training.tracking import use_project_trackers
from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer

logger = logging.getLogger("hf_sft.train")


def log_start(trainer, model_args, data_args, eval_args, training_args, prepared) -> None:
    """The start block: what is trained on what, where, how it is evaluated, and where everything goes."""
    model = trainer.model
    source = model_args.model_name_or_path or f"random init from {model_args.model_config}"
    tokenizer = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    args = training_args
    steps = f"{args.max_steps} steps" if args.max_steps and args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
    logger.info(
        "hf_sft train: %s\n"
        "  model:      %s (%s, %.2fM parameters, %s), tokenizer %s\n"
        "  data:       %d training examples of %s (%d dropped as over max_length %d, %d truncated); %s of "
        "%d x %d accumulation x %d process(es)\n"
        "  devices:    training on %s (%d process(es))\n"
        "  eval:       %s\n"
        "  output dir: %s",
        getattr(args, "recipe_path", None) or "command line",
        source, model.config.model_type, model.num_parameters() / 1e6, str(model.dtype).removeprefix("torch."),
        tokenizer, len(prepared.train), data_args.train_data, prepared.dropped_overlong, data_args.max_length,
        prepared.truncated, steps, args.per_device_train_batch_size, args.gradient_accumulation_steps,
        args.world_size, args.device, args.world_size,
        describe_eval(trainer, eval_args, data_args, args), os.path.abspath(args.output_dir))


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


def main(argv: list[str] | None = None) -> SFTTrainer:
    """Run the recipe; returns once every rank has written its outputs.

    Under several processes the process group is still up then: the command leaves without tearing
    it down (``rank_exit.exit_rank``), a caller of ``main`` ends it (``trainer.accelerator.end_training()``).
    """
    # 1. Recipe -> dataclasses (YAML defaults, command-line overrides). Before the device is set up, a
    #    single training process is shown only its training GPU (no DataParallel; the eval GPU stays free).
    model_args, data_args, eval_args, training_args = parse_recipe(
        argv, before_training_args=lambda model_args, data_args, eval_args: isolate_training_gpus(eval_args))
    setup_training_logging(training_args)
    check_training_gpu(training_args.device)  # the runtime's GPU is the intended one (CUDA runs only)
    set_seed(training_args.seed)

    # 2. Every path the recipe names, the output dir's space and /dev/shm, before any work (one line naming
    #    the key on failure, not a traceback after the training set is tokenised).
    weight_dtype = resolve_dtype(model_args, training_args)
    checked = check_before_work(model_args, data_args, eval_args, training_args, weight_dtype.itemsize)
    check_shared_memory_before_work(eval_args, training_args, checked.num_parameters, weight_dtype)

    # 3. Tokenizer, then data (checked and tokenised before the model is loaded: bad input fails fast).
    tokenizer = load_tokenizer(model_args)
    with training_args.main_process_first(desc="preparing the dataset"):
        prepared = prepare_train_dataset(data_args, tokenizer)
    train_dataset = prepared.train

    # 4. Model.
    model = load_model(model_args, training_args, tokenizer)

    # 5. Trainer with the response-only loss.
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=PadToLongestCollator(pad_token_id(tokenizer)),
        processing_class=tokenizer,
    )
    use_project_trackers(trainer)  # report_to trackers with train_step / eval_step axes
    quiet_trainer(trainer)  # --log_level warning: no progress bar or printed metrics either

    # 6. Generation-based evaluation at eval_steps, as a callback.
    to_close = add_eval_callback(trainer, model_args, data_args, eval_args, training_args, tokenizer)
    log_start(trainer, model_args, data_args, eval_args, training_args, prepared)

    # 7. Train (resuming when asked; SIGTERM saves a checkpoint and stops), then save the final model.
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
    else:
        trainer.save_model(training_args.output_dir)
        trainer.save_state()
        if trainer.is_world_process_zero():
            logger.info("Saved model, tokenizer and trainer_state.json to %s", training_args.output_dir)
            if (Path(training_args.output_dir) / "results").is_dir():
                build_run_report(training_args.output_dir)  # plots + report.md of the eval curve
    wait_for_every_rank(trainer.accelerator)
    return trainer


def cli() -> None:
    """The command: bad recipes, data and model paths end with their message, not a traceback."""
    from hf_sft.data.loading import DataFormatError
    from hf_sft.evaluation.snapshots import SnapshotMemoryError
    from hf_sft.training.modeling import ModelLoadError

    try:
        trainer = main()
    except (RecipeError, DataFormatError, ModelLoadError, SnapshotMemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    exit_rank(trainer.accelerator)  # one of several processes: leave without gloo's teardown (rank_exit.py)


if __name__ == "__main__":
    cli()
