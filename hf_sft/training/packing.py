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

No host syncs inside the forward and backward. Everything about a microbatch's layout (sequence
lengths, ``cu_seq_lens``, max lengths, the key gather index of the shared prefix, the response
positions) is computed on the CPU by ``PackingCollator`` in the data loader, and travels as Python
ints and index tensors: the attention and the loss never read a device tensor back to the host
(on CUDA each ``.tolist()``/``.item()``/boolean-mask index waits for the GPU to drain; the old path
did that in each of 28 layers, twice with checkpointing). ``tests/training/test_packing.py`` counts
the host reads of a training step.

On CUDA, when torch has ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention-2 inside torch,
torch/nn/attention/varlen.py: one call over the whole packed row, grouped-query heads, causal,
with backward), ``torch_varlen_attention`` is registered through transformers' ``AttentionInterface``
and used instead of the per-example SDPA loop. The shared prefix becomes key offsets: example i's
keys are gathered as ``[prefix, own tokens]`` (``prefix_key_index``, built on the CPU), and
FlashAttention's causal mask is aligned bottom-right when a sequence has more keys than queries
(varlen.py: ``window_size=(-1, 0)`` is causal; flash-attn's README: "the causal mask is aligned
to the bottom right corner of the attention matrix"), which is exactly "query j sees the prefix and
its own keys 0..j".
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils.generic import is_flash_attention_requested

logger = logging.getLogger(__name__)

VARLEN_SDPA = "hf_sft_varlen_sdpa"
VARLEN_TORCH = "hf_sft_varlen_torch"
OUR_VARLEN = (VARLEN_SDPA, VARLEN_TORCH)
# What the trainer passes to the model for a packed row. The flash-attention paths of transformers read
# cu_seq_lens_q/k and max_length_q/k (modeling_flash_attention_utils.py ``_flash_attention_forward``:
# ``is_fa_with_varlen_kwargs``); ours also read the CPU-built lengths and prefix offsets.
PACKED_MODEL_KEYS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
PREFIX_KEYS = ("packed_seq_lens", "shared_prefix_length", "prefix_key_index", "prefix_cu_seq_lens_k",
               "prefix_max_length_k")


def _segments_from_position_ids(position_ids: torch.Tensor) -> list[int]:
    """Sequence boundaries of a packed row from positions that restart at 0 (a host read: direct callers only)."""
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return starts + [position_ids.shape[-1]]


def _packed_lengths(query, key, attention_mask, packed_seq_lens, cu_seq_lens_q, position_ids) -> list[int] | None:
    """Per-example query lengths of a packed row, or None when the input is not a packed row.

    Training passes ``packed_seq_lens`` (CPU ints from the collator): no host read. Callers that
    hand the model only ``cu_seq_lens_q`` or restarting ``position_ids`` still work, at the price of
    one host read per layer.
    """
    packed = query.shape[0] == 1 and attention_mask is None and query.shape[2] == key.shape[2]
    if not packed:
        return None
    if packed_seq_lens is not None:
        return list(packed_seq_lens)
    if cu_seq_lens_q is not None:
        bounds = cu_seq_lens_q.tolist()
    elif position_ids is not None and position_ids.shape[-1] == query.shape[2]:
        bounds = _segments_from_position_ids(position_ids)
    else:
        return None
    return [end - start for start, end in zip(bounds[:-1], bounds[1:])]


def varlen_sdpa_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, cu_seq_lens_k=None,
                          position_ids=None, shared_prefix_length=0, packed_seq_lens=None, prefix_key_index=None,
                          prefix_cu_seq_lens_k=None, prefix_max_length_k=None, **kwargs):
    """SDPA attention that keeps packed examples apart; plain SDPA for everything else.

    Packed means one row with its example lengths (``packed_seq_lens``, or ``cu_seq_lens_q``, or
    ``position_ids`` restarting at 0, with no mask); each example is then attended causally on
    its own slice. With ``shared_prefix_length`` p, every slice after the first also attends to the
    row's first p tokens (see the module docstring). Generation and padded batches (a mask or a KV
    cache present) go straight to transformers' SDPA, unchanged.
    """
    lengths = _packed_lengths(query, key, attention_mask, packed_seq_lens, cu_seq_lens_q, position_ids)
    if lengths is None or len(lengths) <= 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # split (not slicing): its backward is one concatenation, where each slice's backward would
    # write a zero-filled full-size gradient per example.
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
    """No mask for packed rows (the varlen attentions split them); SDPA's mask otherwise."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


# ---------------------------------------------------------------------------------------------- torch varlen


def _load_varlen_attn() -> Callable | None:
    """torch's varlen_attn, adapted to one calling convention, or None where this torch lacks it.

    torch 2.10 spells causality ``is_causal=True``; later versions ``window_size=(-1, 0)``
    (torch/nn/attention/varlen.py: ``is_causal = window_size == (-1, 0)``). ``enable_gqa`` (fewer
    key/value heads than query heads) is newer still: without it the key/value heads are repeated.
    torch 2.10 has no ``scale`` either (its softmax scale is 1/sqrt(head_dim)); a model asking for another
    scale gets None back from the call, and the per-example SDPA runs instead.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    gqa = "enable_gqa" in params
    has_scale = "scale" in params

    def call(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        options = dict(causal)
        if has_scale:
            options["scale"] = scale
        elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-6 * scale:
            return None
        if q.shape[1] != k.shape[1]:
            if gqa:
                return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, enable_gqa=True, **options)
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **options)

    return call


_VARLEN_ATTN = _load_varlen_attn()


def torch_varlen_available(device) -> bool:
    """varlen_attn runs FlashAttention's CUDA kernels: CUDA only, and only where this torch has it."""
    return _VARLEN_ATTN is not None and torch.device(device).type == "cuda"


def _varlen_kernel_takes(query: torch.Tensor, dtype: torch.dtype) -> bool:
    """FlashAttention's kernels: CUDA tensors in half precision (there is no fp32 kernel)."""
    return query.is_cuda and dtype in (torch.float16, torch.bfloat16)


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype SDPA would compute in here: autocast's, when it is on.

    With fp32 master weights under bf16 autocast (the MATH recipes) q and k come out of RoPE in fp32
    (Qwen2's rotary cos/sin take the fp32 hidden states' dtype, and q * cos promotes), and autocast casts
    SDPA's inputs to bf16 (SDPA is on its lower-precision list); a custom op is not cast, so we do it.
    """
    device = query.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return query.dtype


def torch_varlen_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, cu_seq_lens_k=None,
                           max_length_q=None, max_length_k=None, shared_prefix_length=0, packed_seq_lens=None,
                           prefix_key_index=None, prefix_cu_seq_lens_k=None, prefix_max_length_k=None,
                           position_ids=None, dropout=0.0, scaling=None, **kwargs):
    """The whole packed row in one ``varlen_attn`` call; the per-example SDPA for anything else.

    Needs the collator's ``cu_seq_lens_q`` (on the device) and ``max_length_q`` (an int), half
    precision inputs (FlashAttention has no fp32 kernel) and no dropout. The shared prefix is read
    through ``prefix_key_index`` / ``prefix_cu_seq_lens_k``: example i's keys are the prefix then its
    own, and the bottom-right causal mask lets query j see the prefix and its own keys 0..j.
    """
    usable = (cu_seq_lens_q is not None and isinstance(max_length_q, int) and _VARLEN_ATTN is not None
              and query.shape[0] == 1 and attention_mask is None and query.shape[2] == key.shape[2]
              and _varlen_kernel_takes(query, _compute_dtype(query)) and not (module.training and dropout)
              and kwargs.get("sliding_window") is None)
    if not usable:
        return varlen_sdpa_attention(module, query, key, value, attention_mask, cu_seq_lens_q=cu_seq_lens_q,
                                     position_ids=position_ids, shared_prefix_length=shared_prefix_length,
                                     packed_seq_lens=packed_seq_lens, dropout=dropout, scaling=scaling, **kwargs)
    # (1, heads, tokens, dim) -> (tokens, heads, dim), the layout of varlen_attn and flash-attn's varlen functions
    dtype = _compute_dtype(query)
    q, k, v = (x[0].transpose(0, 1).to(dtype).contiguous() for x in (query, key, value))
    cu_k, max_k = cu_seq_lens_q, max_length_q
    if shared_prefix_length and prefix_key_index is not None:
        k, v = k.index_select(0, prefix_key_index), v.index_select(0, prefix_key_index)
        cu_k, max_k = prefix_cu_seq_lens_k, prefix_max_length_k
    out = _VARLEN_ATTN(q, k, v, cu_seq_lens_q, cu_k, max_length_q, max_k, scaling)
    if out is None:  # this torch's varlen_attn cannot take the model's softmax scale
        return varlen_sdpa_attention(module, query, key, value, attention_mask, cu_seq_lens_q=cu_seq_lens_q,
                                     position_ids=position_ids, shared_prefix_length=shared_prefix_length,
                                     packed_seq_lens=packed_seq_lens, dropout=dropout, scaling=scaling, **kwargs)
    return out.unsqueeze(0), None


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
AttentionMaskInterface.register(VARLEN_SDPA, varlen_sdpa_mask)
AttentionInterface.register(VARLEN_TORCH, torch_varlen_attention)
AttentionMaskInterface.register(VARLEN_TORCH, varlen_sdpa_mask)


def enable_padding_free(model, device=None) -> str:
    """Make ``model`` attend within each packed example; returns the attention implementation used.

    ``sdpa`` is swapped for torch's varlen attention on CUDA when this torch has it, else for the
    per-example SDPA above (both identical to SDPA on unpacked inputs). Any flash-attention flavour
    (transformers' ``is_flash_attention_requested``: "flash" in the name, so ``flash_attention_2/3/4``
    and hub kernels such as ``kernels-community/flash-attn3``) already reads ``cu_seq_lens_*``; any
    other implementation cannot, and is refused rather than silently letting examples attend to each other.
    """
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if current in OUR_VARLEN or is_flash_attention_requested(requested_attention_implementation=current):
        return current
    if current != "sdpa":
        raise ValueError(f"padding_free needs attn_implementation sdpa or a flash attention (flash_attention_2/3/4, "
                         f"a flash kernel from the hub), but the model uses {current!r}; set padding_free: false or "
                         f"change attn_implementation")
    device = device if device is not None else next(model.parameters()).device
    chosen = VARLEN_TORCH if torch_varlen_available(device) else VARLEN_SDPA
    model.set_attn_implementation(chosen)
    return chosen


def shares_prefix(attn_implementation: str | None) -> bool:
    """Only our varlen attentions understand a shared prefix; transformers' flash paths do not."""
    return attn_implementation in OUR_VARLEN


# ---------------------------------------------------------------------------------------------- the layout


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


def _prefix_keys(lengths: list[int], prefix: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Key rows of each example under a shared prefix: example 0 as is, example i > 0 as [prefix, own]."""
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    pieces = [torch.arange(0, lengths[0])]
    for start, n in zip(starts[1:], lengths[1:]):
        pieces += [torch.arange(0, prefix), torch.arange(start, start + n)]
    key_lengths = [lengths[0]] + [prefix + n for n in lengths[1:]]
    cu = torch.tensor([0] + key_lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return torch.cat(pieces), cu, max(key_lengths)


def unpad(batch: dict[str, torch.Tensor], share_prefix: bool = False) -> dict[str, Any]:
    """A padded microbatch -> one packed row, with everything the attention and the loss need to know.

    Works for left or right padding (the attention mask says which tokens are real). Examples keep
    their order, so per-example quantities can be cut back out with ``cu_seq_lens``. With
    ``share_prefix``, the prompt prefix common to all examples is kept once, at the start of the
    row (``shared_prefix_length`` > 0); the cut-out pieces of example i > 0 then lack that prefix,
    which carries no labels. Computed on the CPU (the batch is moved there first if it is not:
    that costs host reads, so training calls this in the collator); tensors come back on the
    batch's device, lengths as Python ints.
    """
    device = batch["input_ids"].device
    batch = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
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
    seq_lens = lengths.tolist()
    cu_seq_lens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    max_length = max(seq_lens)
    out: dict[str, Any] = {
        "input_ids": input_ids[keep].unsqueeze(0),
        "position_ids": positions[keep].unsqueeze(0),
        "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max_length, "max_length_k": max_length,
        "packed_seq_lens": tuple(seq_lens),
        "shared_prefix_length": prefix,
        "num_sequences": int(input_ids.shape[0]),
    }
    if prefix:
        index, cu_k, max_k = _prefix_keys(seq_lens, prefix)
        out.update(prefix_key_index=index, prefix_cu_seq_lens_k=cu_k, prefix_max_length_k=max_k)
    for name in ("labels", "response_mask"):
        if name in batch:
            out[name] = batch[name][keep].unsqueeze(0)
    if "response_mask" in out:
        # positions of the row that carry a loss: the LM head gathers them with index_select (a boolean mask
        # index would have to read the mask back to size its output).
        out["response_index"] = out["response_mask"][0].bool().nonzero().flatten()
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def model_kwargs(packed: dict[str, Any], config=None) -> dict[str, Any]:
    """What the model's forward gets for a packed row (the prefix keys only when a prefix is shared).

    With the model's ``config``, the attention mask is given as "no mask for any layer type"
    (``{layer_type: None}``): transformers 5 models take such a mapping as precomputed masks
    (modeling_qwen2.py: ``if not isinstance(causal_mask_mapping := attention_mask, dict)``) and then
    skip ``create_causal_mask``, whose packed-sequence detection reads the device once per forward
    (masking_utils.py ``find_packed_sequence_indices``: ``if ... (packed_sequence_mask[:, -1] == 0).all()``).
    A packed row needs no mask: the varlen attentions keep the examples apart.
    """
    kwargs = {k: packed[k] for k in PACKED_MODEL_KEYS}
    kwargs["packed_seq_lens"] = packed["packed_seq_lens"]
    if packed["shared_prefix_length"]:
        kwargs.update({k: packed[k] for k in PREFIX_KEYS})
    layer_types = getattr(config, "layer_types", None) if config is not None else None
    if layer_types:
        kwargs["attention_mask"] = dict.fromkeys(layer_types)
    return kwargs


def is_packed(batch: dict) -> bool:
    return "packed_seq_lens" in batch


@dataclass
class PackingCollator:
    """Wraps a padding collator: the padded microbatch is packed into one row on the CPU, in the data loader.

    The data loader (or accelerate) then moves the tensors to the device; the lengths stay Python ints.
    """

    collator: Callable[[list[dict]], dict[str, torch.Tensor]]
    share_prefix: bool = False

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        return unpad(self.collator(features), share_prefix=self.share_prefix)
