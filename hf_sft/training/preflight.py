"""Checks that run before any work: every path a recipe names, and the disk its checkpoints will need.

A typo in ``model_name_or_path`` used to surface only after the whole training set was formatted and
tokenised (minutes for a large set). Here each reference is checked for what it can be (a local path
that exists, a builtin asset, or something shaped like a hub id; offline, a hub id already in the cache)
and ``output_dir`` for writability and free space, each failure a one-line `PreflightError` naming the
recipe key. The model's size comes from its config alone (a meta-device init: no memory, no weights),
for the disk estimate here and the /dev/shm estimate of hf_sft.evaluation.from_recipe.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hf_sft.config import RecipeError
from hf_sft.data import builtin

logger = logging.getLogger(__name__)

BUILTIN_DATA = ("builtin:addition/train", "builtin:addition/test")
BUILTIN_TOKENIZERS = ("builtin:addition-bpe",)


class PreflightError(RecipeError):
    """A recipe key whose path cannot work; the message starts with the key."""


@dataclass
class Preflight:
    """What the checks learnt on the way: the model's parameter count (None when it needs the network)."""

    num_parameters: int | None = None
    checkpoint_bytes: int | None = None


def looks_local(ref: str) -> bool:
    """Written as a path (./x, /x, ~/x, a .json file, or a directory that exists), not as a hub id."""
    return ref.startswith((".", "/", "~")) or ref.endswith((".json", ".jsonl")) or Path(ref).expanduser().exists()


def _missing(key: str, ref: str) -> PreflightError:
    """As hf_sft.training.modeling words it when it loads (which still checks, for the other callers)."""
    where = "" if Path(ref).expanduser().is_absolute() else \
        f" (relative paths are read from the current directory, {Path.cwd()})"
    return PreflightError(f"{key} '{ref}' does not exist{where}")


def _hub_id(key: str, ref: str, cached_file: str | None, what: str) -> None:
    """Shaped like a hub id; offline, also present in the hub cache (``cached_file`` in it)."""
    from huggingface_hub import is_offline_mode, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise PreflightError(f"{key}: '{ref}' is neither an existing local path nor a hub {what} id") from None
    if cached_file and is_offline_mode():
        kind = "dataset" if what == "dataset" else None
        if not isinstance(try_to_load_from_cache(ref, cached_file, repo_type=kind), str):
            raise PreflightError(f"{key}: '{ref}' is not a local path, and the hub is offline (HF_HUB_OFFLINE) "
                                 f"with no cached copy of it")


def check_model_ref(key: str, ref: str | None, *, config_file: bool = False) -> None:
    """A model or tokenizer reference: builtin tokenizer, local dir (or JSON config), or hub id."""
    if ref is None:
        return
    if builtin.is_builtin(ref):
        if ref not in BUILTIN_TOKENIZERS:
            raise PreflightError(f"{key}: unknown builtin asset '{ref}'; known: {', '.join(BUILTIN_TOKENIZERS)}")
        return
    path = Path(ref).expanduser()
    if looks_local(ref):
        if not path.exists():
            raise _missing(key, ref)
        if path.is_dir() and not config_file and not any((path / f).is_file() for f in (
                "config.json", "tokenizer_config.json", "tokenizer.json")):
            raise PreflightError(f"{key}: '{ref}' is a directory without config.json or tokenizer files")
        return
    _hub_id(key, ref, "config.json" if key != "tokenizer_name_or_path" else "tokenizer_config.json", "model")


def check_data_ref(key: str, ref: str | None) -> None:
    """A data source: builtin:NAME, a local JSONL file (or dataset directory), or a hub dataset id."""
    if ref is None:
        return
    if builtin.is_builtin(ref):
        if ref not in BUILTIN_DATA:
            raise PreflightError(f"{key}: unknown builtin asset '{ref}'; known: {', '.join(BUILTIN_DATA)}")
        return
    if looks_local(ref):
        if not Path(ref).expanduser().exists():
            raise _missing(key, ref)
        return
    _hub_id(key, ref, None, "dataset")


def count_parameters(model_args) -> int | None:
    """Parameters of the model the recipe will train, from its config on a meta device (no weights)."""
    ref = model_args.model_name_or_path or model_args.model_config
    if ref is None or builtin.is_builtin(ref):
        return None
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(ref, trust_remote_code=model_args.trust_remote_code, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
        return sum(p.numel() for p in model.parameters())  # parameters() lists a tied weight once
    except Exception as err:  # a config only the hub has, an exotic architecture: the later steps will say
        logger.debug("no parameter count before loading %s: %s", ref, err)
        return None


def checkpoints_kept(training_args) -> tuple[int, bool]:
    """(checkpoints on disk at the peak, whether that is exact) for the recipe's save settings."""
    strategy = str(getattr(training_args.save_strategy, "value", training_args.save_strategy))
    if strategy == "no":
        return 0, True
    limit = training_args.save_total_limit
    if strategy == "steps" and training_args.max_steps and training_args.max_steps > 0:
        every = training_args.save_steps
        every = math.ceil(every * training_args.max_steps) if every < 1 else int(every)
        saves = training_args.max_steps // max(every, 1)
    elif strategy == "epoch" and (training_args.max_steps or 0) <= 0:
        saves = math.ceil(training_args.num_train_epochs)
    else:  # best, or a count that depends on the dataset's length
        return (limit + 1 if limit else 1), False
    # Trainer saves the new checkpoint before rotating out the oldest: limit + 1 exist for a moment.
    return (min(saves, limit + 1) if limit else saves), True


def check_output_dir(training_args, checkpoint_bytes: int | None, weights_bytes: int | None) -> None:
    """``output_dir`` can be created and written, and holds the checkpoints and the final model."""
    out = Path(training_args.output_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".hf_sft_write_check_"):
            pass
    except OSError as err:
        raise PreflightError(f"output_dir: '{training_args.output_dir}' is not writable: {err.strerror or err}") \
            from None
    if checkpoint_bytes is None or weights_bytes is None:
        return
    count, exact = checkpoints_kept(training_args)
    needed = count * checkpoint_bytes + weights_bytes
    free = shutil.disk_usage(out).free
    if free < needed:
        gb = 1 / 2**30
        raise PreflightError(
            f"output_dir: '{training_args.output_dir}' has {free * gb:.1f} GiB free but the recipe saves about "
            f"{needed * gb:.1f} GiB ({'' if exact else 'at least '}{count} checkpoint(s) of {checkpoint_bytes * gb:.1f}"
            f" GiB and the final model of {weights_bytes * gb:.1f} GiB): free space, or set save_total_limit")


def check_before_work(model_args, data_args, eval_args, training_args, weight_itemsize: int) -> Preflight:
    """Every path of the recipe, then the output dir's space; raises PreflightError naming the key."""
    check_model_ref("model_name_or_path", model_args.model_name_or_path)
    if not model_args.model_name_or_path:
        check_model_ref("model_config", model_args.model_config, config_file=True)
    check_model_ref("tokenizer_name_or_path", model_args.tokenizer_name_or_path)
    check_data_ref("train_data", data_args.train_data)
    if eval_args.eval_backend != "none":
        check_data_ref("eval_data", data_args.eval_data)
    n = count_parameters(model_args)
    weights = None if n is None else n * weight_itemsize
    # A checkpoint holds the weights and AdamW's two moments (same dtype), unless save_only_model.
    checkpoint = None if weights is None else weights * (1 if training_args.save_only_model else 3)
    if training_args.should_save:  # the process that writes output_dir
        check_output_dir(training_args, checkpoint, weights)
    return Preflight(n, checkpoint)
