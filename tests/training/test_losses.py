"""The speed/memory options change how the loss is computed, never what it is.

Reference: hf_sft.core (full logits, padded batch). Checked against it: the fused chunked LM head
(loss, gradients, entropy, accuracy), padding-free packing (per-example losses and gradients, no
attention across examples), the trainer with every option on vs off, and that the fused head
never holds the (tokens x vocab) logits.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_sft.config import SFTConfig
from hf_sft.core import compute_entropy, get_response_log_probs, pad_token_id, tokenize_prompt_and_output
from hf_sft.training.losses import auto_chunk_tokens, fused_linear_nll, plain_linear_nll
from hf_sft.training.packing import VARLEN_SDPA, common_prefix_length, enable_padding_free, model_kwargs, unpad
from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer
from tests.helpers import make_tiny_qwen2
from tests.helpers import OUTPUTS, PROMPTS, accumulated_grads, features

OFF = {"padding_free": False, "shared_prefix": False, "response_only_lm_head": False, "fused_lm_head": False}


# ---------------------------------------------------------------------------------------------
# The fused head alone


@pytest.mark.parametrize("with_bias,with_weights", [(False, False), (True, True)])
def test_fused_head_equals_plain_autograd(with_bias, with_weights):
    torch.manual_seed(0)
    n, h, v = 53, 24, 97
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    bias = torch.randn(v, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,))
    weights = torch.rand(n) if with_weights else None
    params = [x for x in (hidden, weight, bias) if x is not None]

    fused = fused_linear_nll(hidden, weight, bias, targets, weights, chunk_tokens=10)
    g_fused = torch.autograd.grad(2.5 * fused.nll_sum, params)
    plain = plain_linear_nll(hidden, weight, bias, targets, weights)
    g_plain = torch.autograd.grad(2.5 * plain.nll_sum, params)

    torch.testing.assert_close(fused.nll_sum, plain.nll_sum)
    for a, b in zip(g_fused, g_plain):  # fp32, logits of size ~5: rounding is ~1e-6 absolute
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    logits = torch.nn.functional.linear(hidden, weight, bias).detach()
    torch.testing.assert_close(fused.entropy, compute_entropy(logits))
    torch.testing.assert_close(fused.log_probs, torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0])
    assert torch.equal(fused.correct, logits.argmax(-1) == targets)


def test_fused_head_gradcheck_in_float64():
    torch.manual_seed(1)
    hidden = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (9,))
    weights = torch.rand(9, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, w, b: fused_linear_nll(x, w, b, targets, weights, chunk_tokens=4).nll_sum, (hidden, weight, bias))


def test_fused_head_without_grad_mode_computes_no_gradients():
    hidden = torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(7, 4, requires_grad=True)
    with torch.no_grad():
        out = fused_linear_nll(hidden, weight, None, torch.randint(0, 7, (6,)))
    assert not out.nll_sum.requires_grad


def test_fused_head_never_holds_the_full_logits():
    """Peak tensor memory of forward + backward stays near one chunk, far below the (N x V) logits."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    n, h, v, chunk = 4096, 16, 4096, 64
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fused_linear_nll(hidden, weight, None, targets, chunk_tokens=chunk).nll_sum.backward()
    live = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    full_logits = n * v * 4
    chunk_logits = chunk * v * 4
    grads = (n * h + 2 * v * h) * 4  # d hidden, d weight (+ its fp32 accumulator)
    # a handful of chunk-sized temporaries (logits, probabilities, their product) and the gradients
    assert peak < grads + 8 * chunk_logits < full_logits / 4, (peak, full_logits)


def test_auto_chunk_is_vocab_dependent():
    assert auto_chunk_tokens(151936) == 128  # the floor: 128 x 151,936 logits = 74 MiB
    assert auto_chunk_tokens(512) == (1 << 24) // 512
    assert auto_chunk_tokens(151936, device="cpu") == 128
    assert auto_chunk_tokens(151936, device="cuda:0") == 4096  # the grad_weight update amortised (losses.py)


# ---------------------------------------------------------------------------------------------
# Padding-free packing


def test_unpad_handles_left_and_right_padding():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [0, 0, 8, 9]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]]),
             "labels": torch.tensor([[6, 7, 1, -100], [-100, -100, 9, 2]]),
             "response_mask": torch.tensor([[False, True, True, False], [False, False, False, True]])}
    packed = unpad(batch)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["cu_seq_lens_q"].tolist() == [0, 3, 5] and packed["max_length_q"] == 3
    assert packed["labels"].tolist() == [[6, 7, 1, 9, 2]]
    assert packed["response_mask"].tolist() == [[False, True, True, False, True]]


def test_shared_prefix_is_kept_once_and_ends_before_any_response_label():
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4, 5, 0], [1, 2, 3, 9, 9, 9], [1, 2, 7, 7, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
             "labels": torch.tensor([[2, 3, 4, 5, 6, -100], [2, 3, 9, 9, 9, 8], [2, 7, 7, 8, -100, -100]]),
             "response_mask": torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]]).bool()}
    assert common_prefix_length(batch) == 2  # tokens agree for 2 positions; example 0's response starts at 2
    packed = unpad(batch, share_prefix=True)
    assert packed["shared_prefix_length"] == 2
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 9, 9, 9, 7, 7]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 4, 5, 2, 3]]
    assert packed["cu_seq_lens_q"].tolist() == [0, 5, 9, 11]
    assert packed["response_mask"].sum() == batch["response_mask"].sum()
    # no sharing for one example, or left padding
    assert common_prefix_length({k: v[:1] for k, v in batch.items()}) == 0
    left = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    assert common_prefix_length(left) == 0


def test_shared_prefix_attention_equals_separate_examples(bpe_tokenizer):
    model = make_tiny_qwen2(len(bpe_tokenizer), seed=5)
    enable_padding_free(model)
    prefix = torch.randint(0, 300, (6,))
    rows = [torch.cat([prefix, torch.randint(0, 300, (n,))]) for n in (4, 7, 3)]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    packed = unpad({"input_ids": ids, "attention_mask": mask}, share_prefix=True)
    assert packed["shared_prefix_length"] == 6
    kwargs = {k: packed[k] for k in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                                     "shared_prefix_length")}
    with torch.no_grad():
        hidden = model(**kwargs, output_hidden_states=True).hidden_states[-1][0]
        alone = [model(r[None], output_hidden_states=True).hidden_states[-1][0] for r in rows]
    expected = torch.cat([alone[0], alone[1][6:], alone[2][6:]])
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)


def test_packed_examples_do_not_attend_to_each_other(bpe_tokenizer):
    model = make_tiny_qwen2(len(bpe_tokenizer), seed=2)
    enable_padding_free(model)
    assert model.config._attn_implementation == VARLEN_SDPA
    a, b = torch.randint(0, 300, (1, 7)), torch.randint(0, 300, (1, 5))
    b2 = torch.randint(0, 300, (1, 5))

    def packed_hidden(first):
        ids = torch.cat([first, b], dim=1)
        batch = unpad({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        batch["position_ids"] = torch.tensor([list(range(first.shape[1])) + list(range(5))])
        batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = torch.tensor([0, first.shape[1], first.shape[1] + 5],
                                                                       dtype=torch.int32)
        batch["packed_seq_lens"] = (first.shape[1], 5)
        return model(**model_kwargs(batch), output_hidden_states=True).hidden_states[-1][0]

    with torch.no_grad():
        alone = model(b, output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(packed_hidden(a)[7:], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed_hidden(b2)[5:], alone, rtol=1e-5, atol=1e-5)


def test_padding_free_leaves_padded_generation_unchanged(bpe_tokenizer):
    tok = bpe_tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS[:3], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=pad_token_id(tok))
    model = make_tiny_qwen2(len(tok), seed=4).eval()
    before = model.generate(**enc, **kwargs)
    enable_padding_free(model)
    after = model.generate(**enc, **kwargs)
    tok.padding_side = "right"
    assert torch.equal(before, after)


def test_padding_free_refuses_attention_that_cannot_separate_examples(bpe_tokenizer):
    model = make_tiny_qwen2(len(bpe_tokenizer))
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="padding_free needs attn_implementation"):
        enable_padding_free(model)


# ---------------------------------------------------------------------------------------------
# The trainer: every option on vs off


def make_trainer(tmp_path, tok, seed=3, **options):
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, report_to="none",
                     learning_rate=0.0, max_grad_norm=None, **options)
    return SFTTrainer(model=make_tiny_qwen2(len(tok), seed=seed), args=args,
                      data_collator=PadToLongestCollator(pad_token_id(tok)))


def loss_grads_metrics(trainer, batch, num_items=None):
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.reset_metrics()
    loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=num_items)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    return loss.detach(), grads, trainer.metric_sums()


@pytest.mark.parametrize("normalization", ["token", "sequence"])
@pytest.mark.parametrize("options", [
    {},  # the defaults: all on
    {"padding_free": False},
    {"shared_prefix": False},
    {"response_only_lm_head": False},
    {"fused_lm_head": False},
    {"padding_free": False, "response_only_lm_head": False},
    {"lm_head_chunk_size": 7},
    {"gradient_checkpointing": True},
])
def test_optimised_loss_gradients_and_metrics_equal_the_plain_path(tmp_path, bpe_tokenizer, options, normalization):
    feats = features(bpe_tokenizer)
    ref = make_trainer(tmp_path, bpe_tokenizer, loss_normalization=normalization, **OFF)
    opt = make_trainer(tmp_path, bpe_tokenizer, loss_normalization=normalization, **options)
    if options.get("gradient_checkpointing"):
        opt.model.gradient_checkpointing_enable()
    batch = ref.data_collator(feats)
    num_items = batch["response_mask"].sum()
    loss_r, grads_r, metrics_r = loss_grads_metrics(ref, batch, num_items)
    loss_o, grads_o, metrics_o = loss_grads_metrics(opt, batch, num_items)
    torch.testing.assert_close(loss_o, loss_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads_o, grads_r, rtol=1e-4, atol=1e-6)
    assert metrics_o["response_tokens"] == metrics_r["response_tokens"] == num_items.item()
    assert metrics_o["correct"] == metrics_r["correct"]
    assert metrics_o["entropy_sum"] == pytest.approx(metrics_r["entropy_sum"], rel=1e-5)
    assert metrics_o["nll_sum"] == pytest.approx(metrics_r["nll_sum"], rel=1e-5)


@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float32])
def test_bf16_mixed_precision_trains_with_the_optimised_head(tmp_path, bpe_tokenizer, model_dtype):
    """`bf16: true` (the MATH recipes): accelerate hands back fp32 hidden states outside autocast, while
    a bf16 model's head is bf16. Trained for real, the defaults follow the plain path's losses."""
    feats = features(bpe_tokenizer)
    losses = {}
    for name, options in (("optimised", {}), ("plain", OFF)):
        args = SFTConfig(output_dir=str(tmp_path / name), per_device_train_batch_size=4, use_cpu=True, bf16=True,
                         report_to="none", learning_rate=1e-3, max_steps=3, logging_steps=1, save_strategy="no",
                         disable_tqdm=True, **options)
        trainer = SFTTrainer(model=make_tiny_qwen2(len(bpe_tokenizer), seed=3).to(model_dtype), args=args,
                             train_dataset=feats, data_collator=PadToLongestCollator(pad_token_id(bpe_tokenizer)))
        trainer.train()
        losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses["optimised"]) == 3 and all(math.isfinite(x) for x in losses["optimised"])
    assert losses["optimised"] == pytest.approx(losses["plain"], rel=2e-2)


def test_logged_entropy_and_accuracy_are_exact(tmp_path, bpe_tokenizer):
    """What SFTTrainer.log reports equals the reference computed from full logits of the padded batch."""
    tok = bpe_tokenizer
    trainer = make_trainer(tmp_path, tok)
    batch = trainer.data_collator(features(tok))
    loss_grads_metrics(trainer, batch, batch["response_mask"].sum())
    logs = {"loss": 1.0}
    trainer.log(logs)
    ref = tokenize_prompt_and_output(PROMPTS, OUTPUTS, tok)
    with torch.no_grad():
        logits = trainer.model(ref["input_ids"]).logits
    mask = ref["response_mask"]
    entropy = compute_entropy(logits[mask]).mean().item()
    accuracy = (logits[mask].argmax(-1) == ref["labels"][mask]).float().mean().item()
    assert logs["entropy"] == round(entropy, 4)
    assert logs["token_accuracy"] == round(accuracy, 4)
    assert logs["num_response_tokens"] == int(mask.sum())


def test_packed_per_example_contributions_equal_padded(tmp_path, bpe_tokenizer):
    """Each example's NLL and the gradient of each example's NLL are those of the padded reference."""
    tok = bpe_tokenizer
    feats = features(tok)[:3]
    trainer = make_trainer(tmp_path, tok)
    model = trainer.model
    batch = trainer.data_collator(feats)
    ref = tokenize_prompt_and_output(PROMPTS[:3], OUTPUTS[:3], tok)
    model_inputs, labels, response_mask, _, _ = trainer._model_inputs(batch)
    bounds = model_inputs["cu_seq_lens_q"].tolist()
    params = [p for p in model.parameters()]
    for i in range(3):
        # Packed path: the fused head on example i's response positions only.
        _, head = trainer._head_from_hidden_states(model, model_inputs, labels.clamp(min=0),
                                                   response_mask & _segment(bounds, i, response_mask.shape))
        g_packed = torch.autograd.grad(head.nll_sum, params, allow_unused=True)
        # Reference: full logits of the padded batch, row i.
        lp = get_response_log_probs(model, ref["input_ids"], ref["labels"])["log_probs"]
        nll_ref = -(lp[i] * ref["response_mask"][i]).sum()
        g_ref = torch.autograd.grad(nll_ref, params, allow_unused=True)
        torch.testing.assert_close(head.nll_sum, nll_ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(g_packed, g_ref):
            a = torch.zeros_like(b) if a is None else a
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _segment(bounds, i, shape):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[0, bounds[i]:bounds[i + 1]] = True
    return mask


def test_one_batch_of_8_equals_4_microbatches_of_2_with_defaults(tmp_path, bpe_tokenizer):

    feats = features(bpe_tokenizer)

    def trainer(mb, ga):
        args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=mb, gradient_accumulation_steps=ga,
                         use_cpu=True, report_to="none", learning_rate=0.0, max_grad_norm=None)
        return SFTTrainer(model=make_tiny_qwen2(len(bpe_tokenizer), seed=3), args=args,
                          data_collator=PadToLongestCollator(pad_token_id(bpe_tokenizer)))

    g8 = accumulated_grads(trainer(8, 1), feats, 8)
    g2 = accumulated_grads(trainer(2, 4), feats, 2)
    torch.testing.assert_close(g8, g2, rtol=1e-4, atol=1e-7)


def test_models_with_scaled_logits_are_refused(tmp_path, bpe_tokenizer):
    model = make_tiny_qwen2(len(bpe_tokenizer))
    model.config.final_logit_softcapping = 30.0
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="scales its logits"):
        SFTTrainer(model=model, args=args, data_collator=PadToLongestCollator(0))
    SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **OFF),
               data_collator=PadToLongestCollator(0))
