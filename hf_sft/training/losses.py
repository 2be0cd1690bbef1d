"""The LM head and the response NLL fused, chunk by chunk, so the (tokens x vocab) logits never exist at once.

With a 151,936-token vocabulary the logits of one microbatch are gigabytes in fp32, and a plain
``log_softmax`` keeps several copies alive for backward. Here the head is applied to one chunk of
tokens at a time; each chunk's log-prob of the label, entropy and argmax are taken from the same
logits, and the gradients of the summed NLL with respect to the hidden states and the head's weight
are accumulated right there, in forward. Backward only scales them by the incoming gradient (the
output is a scalar, so this is the exact chain rule). Three matmuls per chunk, as in plain
autograd, and no recomputation; the price is one weight-sized gradient buffer held from forward
to backward.

The reference these must equal is ``hf_sft.core``: ``get_response_log_probs`` + ``compute_entropy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The chunk size, chosen here and only here (``lm_head_chunk_size: 0``), per device type.
#
# CPU: about 16M logits per chunk (64 MiB in fp32), at least 128 tokens so the head's matmuls stay
# efficient at large vocabularies. Measured on 2 CPU cores at vocab 151,936 (840 tokens, forward +
# backward): 27 tokens/chunk 4.2 s, 64 3.1 s, 128 2.9 s, 256 2.85 s, 512 2.8 s; plain autograd 3.9 s.
#
# CUDA: every chunk ends in ``grad_weight += grad_logits.T @ h`` on the fp32 (V x H) buffer: at
# 151,936 x 1536 that reads and writes ~1.9 GB whatever the chunk size, against 3 x 2 x n x V x H
# FLOPs of matmuls. At 128 tokens that is 0.5 ms of HBM traffic per 0.2 ms of matmul (memory-bound);
# at 4096 tokens 0.5 ms per ~6 ms (7%). The price is the chunk's transient logits, fp32 logits +
# probabilities ~ n x V x 12 bytes = 7.5 GB at 4096 tokens, which a >= 40 GB card holds beside the
# recipe (README memory table). A microbatch of the MATH recipe has ~3-4k response tokens: one chunk.
DEFAULT_CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_TOKENS = 128
CUDA_CHUNK_TOKENS = 4096


def auto_chunk_tokens(vocab_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, device=None) -> int:
    """Tokens per chunk: ``CUDA_CHUNK_TOKENS`` on a GPU; elsewhere about ``chunk_elements`` logits,
    at least ``MIN_CHUNK_TOKENS`` tokens (see above for both)."""
    if device is not None and torch.device(device).type == "cuda":
        return CUDA_CHUNK_TOKENS
    return max(MIN_CHUNK_TOKENS, chunk_elements // max(vocab_size, 1))


@dataclass
class HeadOutputs:
    """What the fused head returns: the differentiable NLL sum and exact per-token statistics."""

    nll_sum: torch.Tensor  # scalar, sum over tokens of weight * -log p(label)
    log_probs: torch.Tensor  # (N,) log p(label), no grad
    entropy: torch.Tensor  # (N,) entropy of the next-token distribution, no grad
    correct: torch.Tensor  # (N,) bool, argmax == label (first maximum on ties, like torch.argmax)


def _chunk_stats(logits: torch.Tensor, targets: torch.Tensor):
    """Probabilities, log p(target), entropy and argmax-correct of one chunk of logits (rows = tokens).

    Entropy is log_z - sum p * (z - max z), the formula of ``core.compute_entropy``, on the same
    shifted logits. Each full-width pass costs memory bandwidth, so they are kept few: one max
    (values and first-maximum indices together, like ``argmax``), one subtraction, one exp, one
    sum, one in-place division, one batched dot product for the entropy. Logits of a linear layer
    are finite, so no -inf guard is needed here (unlike ``compute_entropy``).
    """
    row_max, argmax = logits.max(dim=-1)
    shifted = logits - row_max.unsqueeze(-1)
    probs = torch.exp(shifted)
    sum_exp = probs.sum(dim=-1)
    log_z = torch.log(sum_exp)
    probs.div_(sum_exp.unsqueeze(-1))
    entropy = log_z - torch.bmm(probs.unsqueeze(1), shifted.unsqueeze(2)).view(-1)
    log_probs = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    return probs, log_probs, entropy, argmax == targets


class FusedLinearNLL(torch.autograd.Function):
    """sum_t w_t * -log softmax(hidden_t @ W.T + b)[target_t], chunked over tokens.

    Inputs: hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) int64, weights (N,) float
    or None (all ones), chunk_tokens, and whether to compute gradients (decided by the caller, since
    grad mode is always off inside ``forward``). Outputs: the scalar NLL sum, then log-probs,
    entropies and argmax-correct flags per token (non-differentiable).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, weights, chunk_tokens, compute_grad):
        n_tokens = hidden.shape[0]
        want = [compute_grad and g for g in ctx.needs_input_grad[:3]]
        grad_hidden = torch.zeros_like(hidden) if want[0] else None
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if want[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device) if want[2] else None
        # Statistics in fp32 at least (fp64 stays fp64, so that gradcheck can probe this function).
        stat_dtype = torch.promote_types(hidden.dtype, torch.float32)
        log_probs = torch.empty(n_tokens, dtype=stat_dtype, device=hidden.device)
        entropy = torch.empty(n_tokens, dtype=stat_dtype, device=hidden.device)
        correct = torch.empty(n_tokens, dtype=torch.bool, device=hidden.device)
        nll_sum = torch.zeros((), dtype=stat_dtype, device=hidden.device)
        for start in range(0, n_tokens, chunk_tokens):
            end = min(start + chunk_tokens, n_tokens)
            h, t = hidden[start:end], targets[start:end]
            logits = torch.nn.functional.linear(h, weight, bias)
            probs, lp, ent, cor = _chunk_stats(logits.to(stat_dtype), t)
            del logits
            log_probs[start:end], entropy[start:end], correct[start:end] = lp, ent, cor
            w = None if weights is None else weights[start:end].to(stat_dtype)
            nll_sum -= (lp if w is None else lp * w).sum()
            if any(want):
                # d(-log p_t)/dz = softmax(z) - onehot(t), times the token's weight; built in place in probs.
                grad_logits = probs
                grad_logits[torch.arange(end - start, device=t.device), t] -= 1.0
                if w is not None:
                    grad_logits.mul_(w.unsqueeze(-1))
                grad_logits = grad_logits.to(h.dtype)
                if grad_hidden is not None:
                    grad_hidden[start:end] = grad_logits @ weight.to(h.dtype)
                if grad_weight is not None and grad_weight.dtype == h.dtype:
                    grad_weight.addmm_(grad_logits.t(), h)
                elif grad_weight is not None:  # low-precision matmul, fp32 accumulation across chunks
                    grad_weight += grad_logits.t() @ h
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
                del grad_logits
            del probs
        empty = torch.empty(0)
        ctx.save_for_backward(*(g if g is not None else empty for g in (grad_hidden, grad_weight, grad_bias)))
        ctx.want = want
        ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(log_probs, entropy, correct)
        return nll_sum, log_probs, entropy, correct

    @staticmethod
    def backward(ctx, grad_nll, *_unused):
        if not any(ctx.want):
            raise RuntimeError("FusedLinearNLL was called with compute_grad=False; it has no gradient to give")
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        out_h = grad_hidden * grad_nll.to(grad_hidden.dtype) if ctx.want[0] else None
        out_w = (grad_weight * grad_nll).to(ctx.param_dtypes[0]) if ctx.want[1] else None
        out_b = (grad_bias * grad_nll).to(ctx.param_dtypes[1]) if ctx.want[2] else None
        return out_h, out_w, out_b, None, None, None, None


def fused_linear_nll(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                     weights: torch.Tensor | None = None, chunk_tokens: int | None = None) -> HeadOutputs:
    """The fused head on (N, H) hidden states; ``chunk_tokens`` None or 0 picks it for the vocabulary and device."""
    chunk = chunk_tokens or auto_chunk_tokens(weight.shape[0], device=hidden.device)
    compute_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (hidden, weight, bias))
    nll_sum, log_probs, entropy, correct = FusedLinearNLL.apply(
        hidden, weight, bias, targets, weights, chunk, compute_grad)
    return HeadOutputs(nll_sum, log_probs, entropy, correct)


def plain_linear_nll(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                     weights: torch.Tensor | None = None) -> HeadOutputs:
    """The same quantities through ordinary autograd on the full (N, V) logits (the unfused baseline)."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    nll_sum = -(log_probs if weights is None else log_probs * weights.to(log_probs.dtype)).sum()
    with torch.no_grad():
        _, _, entropy, correct = _chunk_stats(logits.detach(), targets)
    return HeadOutputs(nll_sum, log_probs.detach(), entropy, correct)
