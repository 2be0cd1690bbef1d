"""The demo's tokenizer, ``builtin:addition-bpe``: a byte-level BPE trained on the demo task's files.

Apart from ``hf_sft.data.builtin`` because it needs ``tokenizers`` and ``transformers``, and the builtin data
files are read by code that must not load them (the report counts a recipe's training examples).
"""

from __future__ import annotations

import json
from pathlib import Path

from hf_sft.data import builtin, demo_task

TOKENIZER_VERSION = "bpe-v1"
NAME = builtin.PREFIX + "addition-bpe"


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
    """``builtin:addition-bpe`` -> the tokenizer's directory (built once, cached); builtin data files and
    anything else as ``hf_sft.data.builtin.resolve`` gives them."""
    if ref != NAME:
        return builtin.resolve(ref)
    task = builtin.task_dir()
    return str(builtin.build_once(f"{demo_task.TASK_VERSION}-{TOKENIZER_VERSION}",
                                  lambda d: build_bpe_tokenizer(d, [task / "train.jsonl"],
                                                                corpus_lines=_unlabelled_test_lines(task))))
