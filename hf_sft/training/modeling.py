"""Model and tokenizer from a recipe: a pretrained checkpoint, or a random init from a config."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hf_sft.data import builtin_tokenizer

logger = logging.getLogger(__name__)

# torch_dtype names a recipe or `hf-sft-eval --torch_dtype` may give (besides auto).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model or tokenizer reference that cannot be loaded; the message says which and why."""


def _check_local(ref: str, what: str) -> None:
    """A path-looking reference that does not exist is a typo, not a hub id: say so early."""
    looks_local = ref.startswith((".", "/", "~")) or ref.endswith(".json") or Path(ref).parts[:1] == ("recipes",)
    if looks_local and not Path(ref).expanduser().exists():
        where = "" if Path(ref).expanduser().is_absolute() else \
            f" (relative paths are read from the current directory, {Path.cwd()})"
        raise ModelLoadError(f"{what} '{ref}' does not exist{where}")


def resolve_dtype(model_args, training_args) -> torch.dtype | str:
    if model_args.torch_dtype == "auto":
        if training_args.bf16:
            return torch.bfloat16
        if training_args.fp16:
            return torch.float16
        return torch.float32
    if model_args.torch_dtype not in DTYPES:
        raise ModelLoadError(f"torch_dtype must be auto, float32, bfloat16 or float16, got {model_args.torch_dtype!r}")
    return DTYPES[model_args.torch_dtype]


def load_tokenizer(model_args):
    ref = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if ref is None:
        raise ModelLoadError("the recipe sets neither tokenizer_name_or_path nor model_name_or_path")
    ref = builtin_tokenizer.resolve(ref)
    _check_local(ref, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=model_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_args, training_args, tokenizer):
    """Pretrained weights when model_name_or_path is set, else a seeded random init from model_config."""
    dtype = resolve_dtype(model_args, training_args)
    kwargs = {"dtype": dtype, "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path:
        _check_local(model_args.model_name_or_path, "model_name_or_path")
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    elif model_args.model_config:
        _check_local(model_args.model_config, "model_config")
        config = AutoConfig.from_pretrained(model_args.model_config, trust_remote_code=model_args.trust_remote_code)
        torch.manual_seed(training_args.seed)
        model = AutoModelForCausalLM.from_config(config, **kwargs)
        logger.info("Randomly initialised %s from %s (%.2fM parameters)", config.model_type,
                    model_args.model_config, model.num_parameters() / 1e6)
    else:
        raise ModelLoadError("the recipe sets neither model_name_or_path nor model_config")
    if len(tokenizer) > model.config.vocab_size:
        raise ModelLoadError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
