"""The spec's primitives, pinned against hand-worked tensors and independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sft.core import (compute_entropy, get_response_log_probs, masked_normalize, sft_microbatch_train_step,
                         tokenize_prompt_and_output)


def test_tokenize_prompt_and_output_shapes_shift_and_mask(bpe_tokenizer):
    tok = bpe_tokenizer
    prompts = ["User: What is 3 + 10?\nAssistant: <think>", "User: What is 12 + 19?\nAssistant: <think>"]
    outputs = [" so 3 + 10 = 13. </think> <answer> 13 </answer>", " 31 </think> <answer> 31 </answer>"]
    out = tokenize_prompt_and_output(prompts, outputs, tok)
    p_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    o_ids = [tok(o, add_special_tokens=False)["input_ids"] for o in outputs]
    full = [p + o for p, o in zip(p_ids, o_ids)]
    max_len = max(map(len, full))
    for key in ("input_ids", "labels", "response_mask"):
        assert out[key].shape == (2, max_len - 1)
    pad = tok.pad_token_id
    for row, seq in enumerate(full):
        padded = seq + [pad] * (max_len - len(seq))
        assert out["input_ids"][row].tolist() == padded[:-1]
        assert out["labels"][row].tolist() == padded[1:]
        # labels at positions len(prompt)-1 .. len(seq)-2 are exactly the output tokens
        expected = [len(p_ids[row]) - 1 <= i < len(seq) - 1 for i in range(max_len - 1)]
        assert out["response_mask"][row].tolist() == expected
        masked_labels = out["labels"][row][out["response_mask"][row]].tolist()
        assert masked_labels == o_ids[row]
        assert tok.decode(masked_labels) == outputs[row]


def test_response_boundary_is_exact_even_where_bpe_would_merge(bpe_tokenizer):
    """Tokenising separately means the response starts exactly at its first character."""
    tok = bpe_tokenizer
    out = tokenize_prompt_and_output(["the answer is"], [" 13 because"], tok)
    labels = out["labels"][0][out["response_mask"][0]]
    assert tok.decode(labels) == " 13 because"


def test_pads_with_eos_when_no_pad_token(bpe_tokenizer):
    import copy

    tok = copy.deepcopy(bpe_tokenizer)
    tok.pad_token = None
    out = tokenize_prompt_and_output(["a", "a b c d e f"], ["x", "y"], tok)
    assert out["input_ids"][0, -1].item() == tok.eos_token_id


def test_compute_entropy_matches_definition_and_is_stable():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    expected = -(p * p.log()).sum(-1)
    assert torch.allclose(compute_entropy(logits), expected.float(), atol=1e-6)
    # uniform over V -> log V
    assert torch.allclose(compute_entropy(torch.zeros(1, 7)), torch.tensor([math.log(7)]), atol=1e-6)
    # huge logits do not overflow; a one-hot-like distribution has ~zero entropy
    extreme = torch.tensor([[1e4, -1e4, 0.0], [1e30, 1e30, -1e30]])
    h = compute_entropy(extreme)
    assert torch.isfinite(h).all()
    assert h[0].item() == pytest.approx(0.0, abs=1e-6)
    assert h[1].item() == pytest.approx(math.log(2), abs=1e-5)


def test_get_response_log_probs_against_manual_softmax(bpe_tokenizer, tiny_model):
    batch = tokenize_prompt_and_output(["User: What is 1 + 8?"], [" 9 </answer>"], bpe_tokenizer)
    out = get_response_log_probs(tiny_model, batch["input_ids"], batch["labels"], return_token_entropy=True)
    logits = tiny_model(batch["input_ids"]).logits.double()
    manual = torch.log(torch.softmax(logits, -1))
    expected = manual[0, torch.arange(batch["labels"].shape[1]), batch["labels"][0]]
    assert out["log_probs"].shape == batch["labels"].shape
    assert torch.allclose(out["log_probs"][0].double(), expected, atol=1e-5)
    assert out["token_entropy"].shape == batch["labels"].shape
    assert not out["token_entropy"].requires_grad
    assert out["log_probs"].requires_grad


def test_masked_normalize_hand_worked():
    t = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[True, False, True], [False, True, True]])
    assert masked_normalize(t, m, 2.0).item() == pytest.approx((1 + 3 + 5 + 6) / 2)
    assert masked_normalize(t, m, 2.0, dim=1).tolist() == [2.0, 5.5]
    assert masked_normalize(t, m, 1.0, dim=0).tolist() == [1.0, 5.0, 9.0]
    assert masked_normalize(t, m, 4.0, dim=-1).tolist() == [1.0, 2.75]


def test_sft_microbatch_train_step_value_and_gradient():
    torch.manual_seed(0)
    raw = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    log_probs = torch.nn.functional.logsigmoid(raw)  # any differentiable log-probabilities
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    loss, meta = sft_microbatch_train_step(log_probs, mask, gradient_accumulation_steps=3, normalize_constant=2.0)
    expected = -(log_probs.detach() * mask).sum() / (2.0 * 3 * 2)
    assert loss.item() == pytest.approx(expected.item())
    # d loss / d log_probs = -mask / (c * ga * B); chain rule through logsigmoid: sigmoid(-raw)
    expected_grad = -mask.double() / 12.0 * torch.sigmoid(-raw.detach())
    assert torch.allclose(raw.grad, expected_grad)
    assert meta["num_response_tokens"].item() == 5


def test_gradient_accumulation_one_batch_of_8_equals_4_microbatches_of_2(bpe_tokenizer):
    from tests.helpers import make_tiny_qwen2

    prompts = [f"User: What is {a} + {a + 7}?\nAssistant: <think>" for a in range(8)]
    outputs = [f" {a} + {a + 7} = {2 * a + 7}. </think> <answer> {2 * a + 7} </answer>" for a in range(8)]
    batch = tokenize_prompt_and_output(prompts, outputs, bpe_tokenizer)

    def grads(microbatch: int):
        model = make_tiny_qwen2(len(bpe_tokenizer), seed=1)
        ga = 8 // microbatch
        for start in range(0, 8, microbatch):
            sl = slice(start, start + microbatch)
            lp = get_response_log_probs(model, batch["input_ids"][sl], batch["labels"][sl])["log_probs"]
            sft_microbatch_train_step(lp, batch["response_mask"][sl], ga, normalize_constant=1.0)
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    g8, g2 = grads(8), grads(2)
    assert torch.allclose(g8, g2, rtol=1e-4, atol=1e-6)
