"""Train a causal LM on prompt/response traces with a response-only loss.

    python hf_sft/train.py recipes/demo.yaml [--key value ...]
    accelerate launch hf_sft/train.py recipes/full.yaml

Reads top to bottom like the recipe it runs: parse, tokenizer, data, model, trainer, train, save.
"""

from __future__ import annotations

import logging
import os
import sys

if __package__ in (None, ""):  # run as a script (`accelerate launch hf_sft/train.py`): make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets
import transformers
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_sft.config import parse_recipe
from hf_sft.core import pad_token_id
from hf_sft.data import prepare_train_dataset
from hf_sft.modeling import load_model, load_tokenizer
from hf_sft.trainer import PadToLongestCollator, SFTTrainer

logger = logging.getLogger("hf_sft.train")


def setup_logging(training_args) -> None:
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logging.getLogger("hf_sft").setLevel(level)
    datasets.utils.logging.set_verbosity(min(level, logging.WARNING))
    transformers.utils.logging.set_verbosity(level)


def resolve_checkpoint(training_args) -> str | None:
    """`resume_from_checkpoint: auto` (or true) resumes from the newest checkpoint in output_dir."""
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", False, "false", "False"):
        return None
    if resume in (True, "true", "True", "auto"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            logger.info("No checkpoint in %s yet: starting from scratch", training_args.output_dir)
        return last
    return resume


def main(argv: list[str] | None = None) -> SFTTrainer:
    # 1. Recipe -> dataclasses (YAML defaults, command-line overrides).
    model_args, data_args, eval_args, training_args = parse_recipe(argv)
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

    # 4. Trainer with the response-only loss; evaluation callbacks plug in here.
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=PadToLongestCollator(pad_token_id(tokenizer)),
        processing_class=tokenizer,
    )

    # 5. Train (resuming when asked), then save a loadable checkpoint and the state.
    trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        logger.info("Saved model, tokenizer and trainer_state.json to %s", training_args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
