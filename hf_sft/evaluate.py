"""Evaluate a hub model or any checkpoint by generation, writing the same files as training does.

    python -m hf_sft.evaluate --model_name_or_path Qwen/Qwen2.5-Math-1.5B \\
        --eval_data ../shared/data/math/validation.jsonl --eval_max_new_tokens 1024
    python -m hf_sft.evaluate recipes/demo.yaml --model_name_or_path outputs/demo/checkpoint-100 --eval_step 100

A recipe given first supplies its eval settings (eval_data, prompt, sampling, subset, seed), so a
checkpoint is evaluated exactly as the training run evaluated it; its training keys are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from transformers import AutoModelForCausalLM, HfArgumentParser

from hf_sft.config import EvalArguments
from hf_sft.recipe_files import load_recipe_file
from hf_sft.evaluation.from_recipe import eval_problems, sampling_settings
from hf_sft.evaluation.runner import run_evaluation
from hf_sft.generation.hf import HFGenerationBackend
from hf_sft.grading.pool import GradingPool
from hf_sft.training.console import setup_console_logging
from hf_sft.training.modeling import DTYPES, load_tokenizer

logger = logging.getLogger("hf_sft.evaluate")


@dataclass
class EvalCommandArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Checkpoint dir or hub id."})
    tokenizer_name_or_path: str | None = field(default=None)
    eval_data: str | None = field(default=None, metadata={"help": "JSONL path or hub dataset id."})
    eval_split: str = field(default="test")
    prompt_template: str = field(default="r1_zero")
    output_dir: str | None = field(
        default=None, metadata={"help": "Where results/eval_logs/ goes; default: the checkpoint dir, or "
                                "outputs/eval/<model name> for a hub id."})
    eval_step: int = field(default=0, metadata={"help": "The step number written in the file names."})
    torch_dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu")
    trust_remote_code: bool = field(default=False)


def parse_args(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((EvalCommandArguments, EvalArguments))
    if argv and not argv[0].startswith("-"):
        recipe = load_recipe_file(argv.pop(0))
        known = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in recipe.items() if k in known and k not in ("output_dir",)})
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def default_output_dir(args: EvalCommandArguments) -> str:
    if args.output_dir:
        return args.output_dir
    if os.path.isdir(args.model_name_or_path):
        return args.model_name_or_path
    return os.path.join("outputs", "eval", args.model_name_or_path.replace("/", "__"))


def main(argv: list[str] | None = None) -> dict:
    args, eval_args = parse_args(argv)
    # As train.py: hf_sft's lines (started, progress every 30 s, done) at INFO, the libraries at warning.
    setup_console_logging(own_level=logging.INFO, library_level=logging.WARNING)
    if not args.model_name_or_path or not args.eval_data:
        raise SystemExit("hf-sft-eval: --model_name_or_path and --eval_data are required (or a recipe that sets them)")
    if eval_args.eval_backend not in ("hf", "none"):
        raise SystemExit(f"hf-sft-eval: eval_backend {eval_args.eval_backend!r} is not available in this command; use hf")

    tokenizer = load_tokenizer(args)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=DTYPES[args.torch_dtype],
                                                 trust_remote_code=args.trust_remote_code).to(args.device)
    problems = eval_problems(args, eval_args)  # as train.py loads them: same problems, prompts and subset
    sampling = sampling_settings(eval_args)
    backend = HFGenerationBackend(model, tokenizer, batch_size=eval_args.eval_batch_size, show_progress=False)
    with GradingPool(timeout=eval_args.eval_grading_timeout) as grader:
        summary = run_evaluation(backend, problems, sampling, grader, eval_step=args.eval_step,
                                 output_dir=default_output_dir(args), model_name=args.model_name_or_path,
                                 reward_fn=eval_args.eval_reward_fn)
    print(json.dumps({"eval_step": summary["eval_step"], **summary["metrics"],
                      "accuracy_ci95": summary["confidence_intervals"]["accuracy"],
                      "categorization": {k: v["count"] for k, v in summary["categorization"].items()}}, indent=2))
    return summary


if __name__ == "__main__":
    main()
