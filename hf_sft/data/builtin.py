"""`builtin:NAME` references: assets the package builds offline, so the demo needs no downloads.

Each asset is written once into a cache directory (``$HF_SFT_CACHE`` or ``~/.cache/hf_sft``)
under a versioned name, atomically, and from then on is an ordinary local path that the
standard loaders (``load_dataset``, ``AutoTokenizer.from_pretrained``) read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hf_sft.data import demo_task
from hf_sft.data.prompts import load_template

PREFIX = "builtin:"
TOKENIZER_VERSION = "bpe-v1"


def cache_root() -> Path:
    return Path(os.environ.get("HF_SFT_CACHE", Path.home() / ".cache" / "hf_sft"))


def is_builtin(ref: str | None) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def _build_once(name: str, build) -> Path:
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


def _task_dir() -> Path:
    template = load_template("r1_zero")
    return _build_once(demo_task.TASK_VERSION, lambda d: demo_task.write_task_files(d, template))


def build_bpe_tokenizer(directory: Path, corpus_files: list[Path], vocab_size: int = 512,
                        corpus_lines: list[str] = ()) -> None:
    """A byte-level BPE like Qwen's (digits split one by one), trained on the demo corpus (files, then lines)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )

    def lines():
        for path in corpus_files:
            yield from path.read_text().splitlines()
        yield from corpus_lines

    tok.train_from_iterator(lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos)
    fast.save_pretrained(directory)


def _unlabelled_test_lines(task: Path) -> list[str]:
    """The test problems as the tokenizer has always seen them ({problem, answer}): the subject / level labels
    added in addition-v4 must not change the merges, or the demo learns differently (57% instead of 95%)."""
    rows = [json.loads(line) for line in (task / "test.jsonl").read_text().splitlines() if line.strip()]
    return [json.dumps({"problem": r["problem"], "answer": r["answer"]}) for r in rows]


def resolve(ref: str) -> str:
    """Turn `builtin:NAME` into a local path; anything else is returned unchanged."""
    if not is_builtin(ref):
        return ref
    name = ref[len(PREFIX):]
    if name == "addition/train":
        return str(_task_dir() / "train.jsonl")
    if name == "addition/test":
        return str(_task_dir() / "test.jsonl")
    if name == "addition-bpe":
        task = _task_dir()
        return str(_build_once(f"{demo_task.TASK_VERSION}-{TOKENIZER_VERSION}",
                               lambda d: build_bpe_tokenizer(d, [task / "train.jsonl"],
                                                             corpus_lines=_unlabelled_test_lines(task))))
    raise ValueError(f"unknown builtin asset '{ref}'; known: builtin:addition/train, builtin:addition/test, "
                     "builtin:addition-bpe")
