"""Packed microbatches: no host reads inside the step, the GPU recipe's shape, the varlen attention's indices.

The host-read proxy: on CPU every tensor is a host tensor, so what is counted is the op calls that
would make the CPU wait for the GPU on CUDA (``hf_sft.training.host_reads``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from hf_sft.config import SFTConfig
from hf_sft.training import packing
from hf_sft.training.host_reads import HostReadCounter
from hf_sft.training.packing import (VARLEN_SDPA, VARLEN_TORCH, PackingCollator, enable_padding_free, model_kwargs,
                                     unpad)
from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer
from tests.helpers import accumulated_grads, make_tiny_qwen2

VOCAB = 300


def examples(n: int, prefix_len: int = 20, seed: int = 0) -> list[dict]:
    """r1_zero-shaped pre-shifted examples: one shared prompt prefix, a varying prompt tail and response."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1, VOCAB, (prefix_len,), generator=g)
    out = []
    for _ in range(n):
        tail = torch.randint(1, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)
        response = torch.randint(1, VOCAB, (int(torch.randint(4, 20, (1,), generator=g)),), generator=g)
        tokens = torch.cat([prefix, tail, response]).tolist()
        n_prompt = prefix_len + len(tail)
        out.append({"input_ids": tokens[:-1], "labels": tokens[1:],
                    "response_mask": [0] * (n_prompt - 1) + [1] * len(response)})
    return out


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


# ---------------------------------------------------------------------------------------------- host reads


def _recipe_trainer(tmp_path, rows, **extra):
    """The GPU recipe's step shape (base_math.yaml): 32 examples x 1, no checkpointing, bf16 autocast, all on."""
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=32, gradient_accumulation_steps=1,
                   use_cpu=True, report_to="none", max_steps=3, logging_steps=1, save_strategy="no",
                   disable_tqdm=True, bf16=True, max_grad_norm=1.0, learning_rate=1e-4, dataloader_num_workers=0)
    return SFTTrainer(model=make_tiny_qwen2(VOCAB), args=SFTConfig(**{**options, **extra}),
                      train_dataset=_Rows(rows), data_collator=PadToLongestCollator(0))


def _count_reads(trainer) -> HostReadCounter:
    """Host reads of trainer.train(), labelled by step and by inside/outside ``training_step`` (forward + backward)."""
    reads = HostReadCounter()

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            reads.phase = f"step {state.global_step + 1}"

        def on_step_end(self, args, state, control, **kwargs):
            reads.phase = f"after step {state.global_step}"

    trainer.add_callback(Phases())
    collate, step = trainer.data_collator, trainer.training_step

    def labelled(label, fn):
        def call(*args, **kwargs):
            outer, reads.phase = reads.phase, f"{reads.phase}: {label}"
            try:
                return fn(*args, **kwargs)
            finally:
                reads.phase = outer
        return call

    # The collator runs on the CPU in the data loader: its reads are host reads on any device.
    trainer.data_collator = labelled("collate", collate)
    trainer.get_train_dataloader = labelled("dataloader", trainer.get_train_dataloader)
    trainer.training_step = labelled("forward+backward", step)
    with reads:
        trainer.train()
    return reads


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_training_step_reads_nothing_back_inside_forward_and_backward(tmp_path, checkpointing):
    trainer = _recipe_trainer(tmp_path, examples(96), gradient_checkpointing=checkpointing)
    assert trainer._share_prefix and isinstance(trainer.data_collator, PackingCollator)
    reads = _count_reads(trainer)
    inside = [e for e in reads.events if e.phase.endswith("forward+backward")]
    assert inside == [], reads.summary()
    # Per optimizer step, at a logging step (logging_steps: 1 here; the MATH recipe logs every 5 steps): the
    # Trainer's loss and grad_norm .item() (transformers/trainer.py _maybe_log_save_evaluate) and our metrics'
    # one .tolist() (SFTTrainer.log). Nothing else, and nothing at all between logging steps.
    # (the sampler's index lists, torch/utils/data/sampler.py, are CPU tensors on any device)
    step2 = [row for row in reads.summary("after step 2") if not row[2].startswith("torch/utils/data/")]
    assert sorted((owner, op) for owner, op, _, _ in step2) == [
        ("hf_sft", "tolist"), ("transformers", "_local_scalar_dense"), ("transformers", "_local_scalar_dense")]
    assert sum(n for *_, n in step2) == 3
    assert reads.count("step 2") == 0


def test_a_padded_batch_handed_to_compute_loss_is_counted(tmp_path):
    """The sync test can fail: the on-the-fly packing of a padded batch reads the mask back."""
    trainer = _recipe_trainer(tmp_path, examples(32))
    padded = PadToLongestCollator(0)(examples(8))
    with HostReadCounter() as reads:
        trainer.compute_loss(trainer.model, padded)
    assert reads.count(owner="hf_sft") > 0


# ---------------------------------------------------------------------------------------------- the GPU shape


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_gradients_of_32_by_1_equal_4_by_8_on_the_same_examples(tmp_path, normalization):
    """base_math.yaml's 32 x 1 without checkpointing takes the optimizer step of the old 4 x 8 with it."""
    rows = examples(32, seed=4)

    def trainer(microbatch, accumulation, checkpointing):
        args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=microbatch,
                         gradient_accumulation_steps=accumulation, loss_normalization=normalization, use_cpu=True,
                         report_to="none", learning_rate=0.0, max_grad_norm=None)
        model = make_tiny_qwen2(VOCAB, seed=3)
        if checkpointing:
            model.gradient_checkpointing_enable()
        return SFTTrainer(model=model, args=args, data_collator=PadToLongestCollator(0))

    g32 = accumulated_grads(trainer(32, 1, False), rows, 32)
    g4 = accumulated_grads(trainer(4, 8, True), rows, 4)
    torch.testing.assert_close(g32, g4, rtol=1e-4, atol=1e-6 * float(g4.abs().max()))


# ---------------------------------------------------------------------------------------------- varlen


def test_attention_dispatch(monkeypatch):
    model = make_tiny_qwen2(VOCAB)
    assert enable_padding_free(model) == VARLEN_SDPA  # CPU: the per-example SDPA
    model = make_tiny_qwen2(VOCAB)
    if packing._VARLEN_ATTN is not None:  # torch >= 2.10 has torch.nn.attention.varlen
        assert enable_padding_free(model, device="cuda") == VARLEN_TORCH
    monkeypatch.setattr(packing, "_VARLEN_ATTN", None)  # torch without varlen_attn: a clean fallback
    assert enable_padding_free(make_tiny_qwen2(VOCAB), device="cuda") == VARLEN_SDPA
    # any flash attention reads cu_seq_lens itself, hub kernels included (transformers' is_flash_attention_requested)
    for name in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn3"):
        assert enable_padding_free(SimpleNamespace(config=SimpleNamespace(_attn_implementation=name))) == name


def test_prefix_key_index_lays_out_each_examples_keys():
    batch = PadToLongestCollator(0)([{"input_ids": [1, 2, 3, 4, 5], "labels": [2, 3, 4, 5, 6],
                                      "response_mask": [0, 0, 1, 1, 1]},
                                     {"input_ids": [1, 2, 7, 8], "labels": [2, 7, 8, 9], "response_mask": [0, 0, 0, 1]},
                                     {"input_ids": [1, 2, 9], "labels": [2, 9, 9], "response_mask": [0, 0, 1]}])
    packed = unpad(batch, share_prefix=True)
    assert packed["shared_prefix_length"] == 2 and packed["packed_seq_lens"] == (5, 2, 1)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 7, 8, 9]]
    # example 0: its own 5 keys; example 1: the prefix (rows 0, 1) then rows 5, 6; example 2: the prefix, then row 7
    assert packed["prefix_key_index"].tolist() == [0, 1, 2, 3, 4, 0, 1, 5, 6, 0, 1, 7]
    assert packed["prefix_cu_seq_lens_k"].tolist() == [0, 5, 9, 12] and packed["prefix_max_length_k"] == 5
    assert packed["response_index"].tolist() == [2, 3, 4, 6, 7]
    assert all(isinstance(packed[k], int) for k in ("max_length_q", "max_length_k", "num_sequences"))


def _varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    """varlen_attn's contract (torch/nn/attention/varlen.py, causal): per sequence, causal aligned to the
    bottom right when there are more keys than queries. FlashAttention has no CPU kernel; this stands in
    for the kernel only, so that the index path around it (gathers, offsets, layouts) runs here."""
    outs = []
    for i in range(len(cu_q) - 1):
        qi, ki, vi = q[cu_q[i]:cu_q[i + 1]], k[cu_k[i]:cu_k[i + 1]], v[cu_k[i]:cu_k[i + 1]]
        n, m = qi.shape[0], ki.shape[0]
        mask = torch.ones(n, m, dtype=torch.bool).tril_(diagonal=m - n)
        ki = ki.repeat_interleave(qi.shape[1] // ki.shape[1], dim=1)
        vi = vi.repeat_interleave(qi.shape[1] // vi.shape[1], dim=1)
        o = torch.nn.functional.scaled_dot_product_attention(qi.transpose(0, 1), ki.transpose(0, 1),
                                                             vi.transpose(0, 1), attn_mask=mask, scale=scale)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_varlen_index_path_equals_the_padded_reference(monkeypatch, share_prefix):
    monkeypatch.setattr(packing, "_VARLEN_ATTN", _varlen_reference)
    monkeypatch.setattr(packing, "_varlen_kernel_takes", lambda query, dtype: True)
    rows = examples(5, prefix_len=9, seed=2)
    padded = PadToLongestCollator(0)(rows)
    reference = make_tiny_qwen2(VOCAB, seed=7)
    model = make_tiny_qwen2(VOCAB, seed=7)
    model.set_attn_implementation(VARLEN_TORCH)
    packed = PackingCollator(PadToLongestCollator(0), share_prefix=share_prefix)(rows)
    assert bool(packed["shared_prefix_length"]) == share_prefix
    hidden = model(**model_kwargs(packed, model.config), output_hidden_states=True).hidden_states[-1][0]
    ref = reference(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                    output_hidden_states=True).hidden_states[-1]
    index = packed["response_index"]
    ours, theirs = hidden.index_select(0, index), ref[padded["response_mask"]]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (ours.square().sum()).backward()
    (theirs.square().sum()).backward()
    for a, b in zip(model.parameters(), reference.parameters()):  # fp32, summed in another order
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4 * float(b.grad.abs().max()))


def test_varlen_inputs_take_autocasts_dtype(monkeypatch):
    """fp32 master weights under bf16 autocast: RoPE hands attention fp32 q/k; the kernel gets bf16, as SDPA would."""
    seen = []

    def reference(q, k, v, *args):
        seen.append((q.dtype, k.dtype, v.dtype))
        return _varlen_reference(q, k, v, *args)

    monkeypatch.setattr(packing, "_VARLEN_ATTN", reference)
    monkeypatch.setattr(packing, "_varlen_kernel_takes", lambda query, dtype: dtype == torch.bfloat16)
    model = make_tiny_qwen2(VOCAB, seed=1)
    model.set_attn_implementation(VARLEN_TORCH)
    packed = PackingCollator(PadToLongestCollator(0), share_prefix=True)(examples(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**model_kwargs(packed, model.config))
    assert seen and set(seen) == {(torch.bfloat16,) * 3}
    seen.clear()
    model(**model_kwargs(packed, model.config))  # fp32 without autocast: no kernel for it, the SDPA loop runs
    assert seen == []


def test_varlen_adapter_speaks_torch_2_10s_signature(monkeypatch):
    """torch 2.10's varlen_attn: is_causal instead of window_size, no scale, no enable_gqa (issue 21: the GPU
    machine has torch 2.11, whose exact signature nobody here has seen; every variant must be called right)."""
    import torch.nn.attention.varlen as varlen

    calls = []

    def varlen_attn_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append((is_causal, query.shape[1], key.shape[1]))
        return _varlen_reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, None)

    monkeypatch.setattr(varlen, "varlen_attn", varlen_attn_2_10)
    call = packing._load_varlen_attn()
    q, k, v = torch.randn(7, 4, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out = call(q, k, v, cu, cu, 4, 4, 8 ** -0.5)
    assert calls == [(True, 4, 4)]  # causal, and the 2 KV heads repeated for the 4 query heads
    torch.testing.assert_close(out, _varlen_reference(q, k, v, cu, cu, 4, 4, None))
    assert call(q, k, v, cu, cu, 4, 4, 0.3) is None  # a scale this signature cannot take: the SDPA loop runs
