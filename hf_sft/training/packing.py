"""Padding-free microbatches: the examples of a microbatch laid end to end in one row.

A padded microbatch of SFT traces is about a third padding here, and every layer pays for it.
Unpadding keeps the same examples in the same microbatch (so the optimizer sees exactly what it
would have seen) and runs the linear layers on the real tokens only. Attention must not cross
example boundaries: positions restart at 0 for each example (``position_ids``) and attention is
computed per example, either by the flash-attention backends, which read ``cu_seq_lens_*`` natively,
or, for ``sdpa`` (CPU, or GPU without flash-attn), by ``varlen_sdpa_attention`` below, which runs
causal SDPA on each example's slice. A block-diagonal mask over the packed row would be exact too,
but it costs (sum of lengths)^2 instead of the sum of squares, and it stops SDPA from using its
causal kernels.

Shared prompt prefix (``shared_prefix``): SFT prompts are made from one template, so every example
of a microbatch usually starts with the same tokens (here 91 of ~256). Those positions have the
same hidden states in every example (causal attention, same positions), so the row holds them
once: ``[prefix + example 1, rest of example 2, rest of example 3, ...]``, and each later example
attends to the prefix's keys and values before its own (a lower-right causal mask). The prefix
carries no loss (it ends before the first response token), and its gradient is the sum of what
every example sends back through attention, exactly as when each example had its own copy.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN_SDPA = "hf_sft_varlen_sdpa"
# Backends that take cu_seq_lens_q/k and max_length_q/k kwargs and attend within each sequence.
NATIVE_VARLEN = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def _segments_from_position_ids(position_ids: torch.Tensor) -> list[int]:
    """Sequence boundaries of a packed row from positions that restart at 0."""
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return starts + [position_ids.shape[-1]]


def varlen_sdpa_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, cu_seq_lens_k=None,
                          position_ids=None, shared_prefix_length=0, **kwargs):
    """SDPA attention that keeps packed examples apart; plain SDPA for everything else.

    Packed means one row whose ``cu_seq_lens_q`` is given (or whose ``position_ids`` restart at 0
    with no mask); each example is then attended causally on its own slice. With
    ``shared_prefix_length`` p, every slice after the first also attends to the row's first p
    tokens (see the module docstring). Generation and padded batches (a mask or a KV cache
    present) go straight to transformers' SDPA, unchanged.
    """
    packed = query.shape[0] == 1 and attention_mask is None and query.shape[2] == key.shape[2]
    bounds = None
    if packed and cu_seq_lens_q is not None:
        bounds = cu_seq_lens_q.tolist()
    elif packed and position_ids is not None and position_ids.shape[-1] == query.shape[2]:
        bounds = _segments_from_position_ids(position_ids)
    if bounds is None or len(bounds) <= 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # split (not slicing): its backward is one concatenation, where each slice's backward would
    # write a zero-filled full-size gradient per example.
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    p = int(shared_prefix_length or 0)
    outputs = []
    for i, (q, k, v) in enumerate(zip(query.split(lengths, dim=2), key.split(lengths, dim=2),
                                      value.split(lengths, dim=2))):
        if q.shape[2] == 0:
            continue
        if i == 0 or p == 0:
            outputs.append(sdpa_attention_forward(module, q, k, v, None, **kwargs)[0])
            continue
        k = torch.cat([key[:, :, :p], k], dim=2)
        v = torch.cat([value[:, :, :p], v], dim=2)
        mask = _prefix_causal_mask(q.shape[2], p, q.device)
        outputs.append(sdpa_attention_forward(module, q, k, v, mask, **kwargs)[0])
    return torch.cat(outputs, dim=1), None


def _prefix_causal_mask(n_queries: int, prefix: int, device) -> torch.Tensor:
    """(1, 1, n, prefix + n) boolean mask: query j sees the whole prefix and its own keys 0..j."""
    mask = torch.ones(n_queries, prefix + n_queries, dtype=torch.bool, device=device).tril_(diagonal=prefix)
    return mask[None, None]


def varlen_sdpa_mask(*args, attention_mask=None, **kwargs):
    """No mask for packed rows (``varlen_sdpa_attention`` splits them); SDPA's mask otherwise."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
AttentionMaskInterface.register(VARLEN_SDPA, varlen_sdpa_mask)


def enable_padding_free(model) -> str:
    """Make ``model`` attend within each packed example; returns the attention implementation used.

    ``sdpa`` is swapped for the varlen SDPA above (identical on unpacked inputs); flash attention
    already handles packed rows; any other implementation cannot, and is refused rather than
    silently letting examples attend to each other.
    """
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if current in NATIVE_VARLEN or current == VARLEN_SDPA:
        return current
    if current != "sdpa":
        raise ValueError(f"padding_free needs attn_implementation sdpa or flash_attention_2/3/4, but the model uses "
                         f"{current!r}; set padding_free: false or change attn_implementation")
    model.set_attn_implementation(VARLEN_SDPA)
    return VARLEN_SDPA


def common_prefix_length(batch: dict[str, torch.Tensor]) -> int:
    """Tokens every example of a right-padded microbatch starts with, before any response token.

    Bounded so that the prefix holds no position with a loss (it ends before the first response
    label of every example) and every example keeps at least one token of its own. 0 when the
    batch has one example or is not right-padded.
    """
    input_ids = batch["input_ids"]
    if input_ids.shape[0] < 2:
        return 0
    keep = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(input_ids, dtype=torch.bool)
    if not bool(keep[:, 0].all()) or bool((keep[:, 1:] & ~keep[:, :-1]).any()):
        return 0
    limit = int(keep.sum(dim=1).min()) - 1
    differs = (input_ids != input_ids[:1]).any(dim=0)
    if "response_mask" in batch:
        differs |= batch["response_mask"].bool().any(dim=0)
    first = differs.nonzero()
    common = int(first[0]) if len(first) else input_ids.shape[1]
    return max(0, min(common, limit))


def unpad(batch: dict[str, torch.Tensor], share_prefix: bool = False) -> dict[str, torch.Tensor]:
    """A padded microbatch -> one packed row with ``position_ids`` and ``cu_seq_lens``.

    Works for left or right padding (the attention mask says which tokens are real). Examples keep
    their order, so per-example quantities can be cut back out with ``cu_seq_lens``. With
    ``share_prefix``, the prompt prefix common to all examples is kept once, at the start of the
    row (``shared_prefix_length`` > 0, for ``varlen_sdpa_attention``); the cut-out pieces of
    example i > 0 then lack that prefix, which carries no labels.
    """
    input_ids = batch["input_ids"]
    keep = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(input_ids, dtype=torch.bool)
    positions = keep.cumsum(dim=1) - 1
    prefix = common_prefix_length(batch) if share_prefix else 0
    lengths = keep.sum(dim=1)
    if prefix:
        keep = keep.clone()
        keep[1:, :prefix] = False
        lengths = lengths.clone()
        lengths[1:] -= prefix
    cu_seq_lens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    max_length = int(lengths.max())
    out = {
        "input_ids": input_ids[keep].unsqueeze(0),
        "position_ids": positions[keep].unsqueeze(0),
        "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max_length, "max_length_k": max_length,
        "shared_prefix_length": prefix,
    }
    for name in ("labels", "response_mask"):
        if name in batch:
            out[name] = batch[name][keep].unsqueeze(0)
    return out
