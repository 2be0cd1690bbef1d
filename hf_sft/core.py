"""The SFT primitives named by the spec, in plain torch.

Everything the trainer, the benchmarks and the tests agree on lives here, so that the
optimised paths elsewhere can be checked against these reference definitions.
"""

from __future__ import annotations

from typing import Any

import torch


def encode_prompt_and_output(prompt_strs: list[str], output_strs: list[str], tokenizer) -> list[tuple[list[int], int]]:
    """Token ids of prompt + output for each pair, and where the output starts.

    Prompt and output are tokenised separately so that the boundary is exact even where a
    BPE merge would have crossed it.
    """
    if len(prompt_strs) != len(output_strs):
        raise ValueError(f"got {len(prompt_strs)} prompts but {len(output_strs)} outputs")
    prompts = tokenizer(list(prompt_strs), add_special_tokens=False)["input_ids"]
    outputs = tokenizer(list(output_strs), add_special_tokens=False)["input_ids"]
    return [(p + o, len(p)) for p, o in zip(prompts, outputs)]


def pad_token_id(tokenizer) -> int:
    """The pad token, or eos when the tokenizer has none (as Qwen's base tokenizers)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
    return pad_id


def tokenize_prompt_and_output(prompt_strs: list[str], output_strs: list[str], tokenizer) -> dict[str, torch.Tensor]:
    """Tokenise prompt and output separately, so the response boundary is exact.

    Returns ``input_ids``, ``labels`` and ``response_mask``, each ``(batch, max_len - 1)``:
    ``labels`` is the concatenation shifted left by one, ``response_mask`` marks the
    label positions that are output tokens. Right-padded with the pad token (eos if none).
    """
    encoded = encode_prompt_and_output(prompt_strs, output_strs, tokenizer)
    max_len = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), max_len), pad_token_id(tokenizer), dtype=torch.long)
    is_output = torch.zeros((len(encoded), max_len), dtype=torch.bool)
    for row, (seq, n_prompt) in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        is_output[row, n_prompt : len(seq)] = True
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "response_mask": is_output[:, 1:]}


def compute_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at every position, over the last dim.

    H = logsumexp(z) - sum softmax(z) * z, evaluated on z - max(z) so that neither huge logits
    (cancellation) nor -inf logits (masked tokens, 0 * inf) spoil it.
    """
    shifted = logits.float() - logits.float().amax(dim=-1, keepdim=True)
    log_z = torch.logsumexp(shifted, dim=-1)
    probs = torch.exp(shifted - log_z.unsqueeze(-1))
    weighted = torch.where(probs > 0, probs * shifted, torch.zeros_like(shifted))
    return log_z - weighted.sum(dim=-1)


def get_response_log_probs(
    model, input_ids: torch.Tensor, labels: torch.Tensor, return_token_entropy: bool = False
) -> dict[str, torch.Tensor]:
    """Per-token log p(label | prefix) under ``model``, unmasked, shaped like ``labels``."""
    logits = model(input_ids).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    result = {"log_probs": log_probs}
    if return_token_entropy:
        with torch.no_grad():
            result["token_entropy"] = compute_entropy(logits)
    return result


def masked_normalize(
    tensor: torch.Tensor, mask: torch.Tensor, normalize_constant: float, dim: int | None = None
) -> torch.Tensor:
    """Sum of ``tensor`` where ``mask`` is true (along ``dim``, or everything), over a constant."""
    masked = tensor * mask.to(tensor.dtype)
    total = masked.sum() if dim is None else masked.sum(dim=dim)
    return total / normalize_constant


def sft_microbatch_train_step(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    gradient_accumulation_steps: int,
    normalize_constant: float = 1.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Backpropagate one microbatch's share of the SFT loss.

    loss = -sum(mask * log p) / (normalize_constant * gradient_accumulation_steps * batch_size),
    so that summing the microbatches of an optimizer step gives the per-sequence mean.
    """
    batch_size = policy_log_probs.shape[0]
    nll_sum = -masked_normalize(policy_log_probs, response_mask, normalize_constant)
    loss = nll_sum / (gradient_accumulation_steps * batch_size)
    loss.backward()
    num_tokens = response_mask.sum()
    metadata = {
        "nll_per_sequence": (nll_sum / batch_size).detach(),
        "num_response_tokens": num_tokens.detach(),
        "nll_per_token": (-(policy_log_probs * response_mask).sum() / num_tokens.clamp(min=1)).detach(),
    }
    return loss.detach(), metadata
