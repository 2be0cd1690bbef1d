"""The hf generation backend: stop strings are matched in the response only, and kept."""

from __future__ import annotations

import torch

from hf_sft.generation.base import SamplingSettings
from hf_sft.generation.hf import HFGenerationBackend, StopInResponse
from tests.helpers import make_tiny_qwen2


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_a_stop_string_straddling_the_prompt_does_not_stop_the_row(bpe_tokenizer):
    tok = bpe_tokenizer
    prompt = ids(tok, "Assistant: <think> so </ans")
    straddling = prompt + ids(tok, "wer> 7")           # "</answer>" only across the boundary
    inside = prompt + ids(tok, " x </answer>")          # a real stop in the response
    width = max(len(straddling), len(inside))
    batch = torch.tensor([row + [0] * (width - len(row)) for row in (straddling, inside)])
    # Right-padding zeros would not decode to a stop string; cut each row at its own length below.
    criterion = StopInResponse(["</answer>"], tok, prompt_length=len(prompt))
    assert criterion(batch[:1, :len(straddling)], None).tolist() == [False]
    criterion = StopInResponse(["</answer>"], tok, prompt_length=len(prompt))
    assert criterion(batch[1:, :len(inside)], None).tolist() == [True]


def test_stop_is_sticky_per_row_and_no_stops_never_stop(bpe_tokenizer):
    tok = bpe_tokenizer
    prompt = ids(tok, "User: 1 + 2")
    rows = torch.tensor([prompt + ids(tok, " </answer>"), prompt + ids(tok, " 3 three")[: len(ids(tok, " </answer>"))]])
    criterion = StopInResponse(["</answer>"], tok, prompt_length=len(prompt))
    assert criterion(rows, None).tolist() == [True, False]
    longer = torch.cat([rows, torch.tensor([[5], [5]])], dim=1)  # the stop leaves the window: still stopped
    for _ in range(20):
        longer = torch.cat([longer, torch.tensor([[5], [5]])], dim=1)
    assert criterion(longer, None).tolist() == [True, False]
    assert StopInResponse([], tok, prompt_length=len(prompt))(rows, None).tolist() == [False, False]


def test_backend_cuts_at_the_stop_keeps_it_and_counts_tokens_to_it(bpe_tokenizer):
    tok = bpe_tokenizer
    model = make_tiny_qwen2(len(tok), seed=3).eval()
    backend = HFGenerationBackend(model, tok, batch_size=2, show_progress=False)
    prompts = ["User: What is 3 + 10?\nAssistant: <think>", "User: What is 4 + 11?\nAssistant: <think>"]
    free = backend.generate(prompts, SamplingSettings(temperature=0.0, max_new_tokens=24, stop=[]))
    assert all(g.finish_reason == "length" and g.num_tokens == 24 for g in free)
    # A stop string taken from the middle of what the (random, greedy) model writes for prompt 0.
    text = free[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip(), text
    stopped = backend.generate(prompts[:1], SamplingSettings(temperature=0.0, max_new_tokens=24, stop=[stop]))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == text[: text.index(stop) + len(stop)]
    assert stopped.num_tokens < 24
