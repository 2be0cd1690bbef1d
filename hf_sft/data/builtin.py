"""`builtin:NAME` references: assets the package builds offline, so the demo needs no downloads.

Each asset is written once into a cache directory (``$HF_SFT_CACHE`` or ``~/.cache/hf_sft``)
under a versioned name, atomically, and from then on is an ordinary local path that the
standard loaders (``load_dataset``, ``AutoTokenizer.from_pretrained``) read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hf_sft.data import demo_task
from hf_sft.data.prompts import load_template

PREFIX = "builtin:"


def cache_root() -> Path:
    return Path(os.environ.get("HF_SFT_CACHE", Path.home() / ".cache" / "hf_sft"))


def is_builtin(ref: str | None) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def build_once(name: str, build) -> Path:
    """Build into a temp dir and rename into place; concurrent builders (DDP ranks) are harmless."""
    target = cache_root() / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def task_dir() -> Path:
    template = load_template("r1_zero")
    return build_once(demo_task.TASK_VERSION, lambda d: demo_task.write_task_files(d, template))


def resolve(ref: str) -> str:
    """Turn a builtin data file (`builtin:addition/train`, `builtin:addition/test`) into a local path; anything
    else is returned unchanged. The demo tokenizer is hf_sft.data.builtin_tokenizer's (it needs transformers)."""
    if not is_builtin(ref):
        return ref
    name = ref[len(PREFIX):]
    if name == "addition/train":
        return str(task_dir() / "train.jsonl")
    if name == "addition/test":
        return str(task_dir() / "test.jsonl")
    if name == "addition-bpe":
        raise ValueError(f"'{ref}' is a tokenizer, not a data file: use it as tokenizer_name_or_path")
    raise ValueError(f"unknown builtin data asset '{ref}'; known: builtin:addition/train, builtin:addition/test")
