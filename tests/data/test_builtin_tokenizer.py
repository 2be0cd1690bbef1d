"""The demo tokenizer asset: built once into the cache, and kept apart from the builtin data files."""

from __future__ import annotations

import pytest

from hf_sft.data import builtin, builtin_tokenizer


def test_the_tokenizer_is_built_once_and_data_refs_pass_through():
    """In the session's cache (tests/conftest.py), where other tests may have built it already: a second
    resolve must find it, not rebuild it."""
    from pathlib import Path

    from transformers import AutoTokenizer

    first = builtin_tokenizer.resolve(builtin_tokenizer.NAME)
    built_at = Path(first).stat().st_mtime_ns
    assert builtin_tokenizer.resolve(builtin_tokenizer.NAME) == first and first.startswith(str(builtin.cache_root()))
    assert Path(first).stat().st_mtime_ns == built_at
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert tokenizer.tokenize("12+34")[:2] == ["1", "2"]  # digits one by one, like Qwen's
    assert builtin_tokenizer.resolve("builtin:addition/train") == builtin.resolve("builtin:addition/train")
    assert builtin_tokenizer.resolve("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"


def test_data_loading_refuses_the_tokenizer_with_a_hint():
    with pytest.raises(ValueError, match="is a tokenizer, not a data file"):
        builtin.resolve("builtin:addition-bpe")
    with pytest.raises(ValueError, match="known: builtin:addition/train, builtin:addition/test"):
        builtin.resolve("builtin:nope")
