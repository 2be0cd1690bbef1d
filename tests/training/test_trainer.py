"""SFTTrainer's loss: response tokens only, and normalisation that survives gradient accumulation."""

from __future__ import annotations

import pytest
import torch

from hf_sft.config import SFTConfig
from hf_sft.core import get_response_log_probs, pad_token_id, tokenize_prompt_and_output
from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer
from tests.helpers import OUTPUTS, PROMPTS, accumulated_grads, features, make_tiny_qwen2

def make_trainer(tmp_path, tok, microbatch, ga, normalization="token"):
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=microbatch,
                     gradient_accumulation_steps=ga, loss_normalization=normalization, use_cpu=True,
                     report_to="none", learning_rate=0.0, max_grad_norm=None)
    model = make_tiny_qwen2(len(tok), seed=3)
    return SFTTrainer(model=model, args=args, data_collator=PadToLongestCollator(pad_token_id(tok)))


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_one_batch_of_8_equals_4_microbatches_of_2(tmp_path, bpe_tokenizer, normalization):
    feats = features(bpe_tokenizer)
    g8 = accumulated_grads(make_trainer(tmp_path, bpe_tokenizer, 8, 1, normalization), feats, 8)
    g2 = accumulated_grads(make_trainer(tmp_path, bpe_tokenizer, 2, 4, normalization), feats, 2)
    # fp32: summation order differs between 1 and 4 microbatches (and with the shared prefix, between a
    # prefix shared by 8 examples and by 2); gradients reach ~14 with sequence normalisation.
    torch.testing.assert_close(g8, g2, rtol=1e-4, atol=1e-6 * float(g2.abs().max()))


def test_token_loss_is_mean_nll_over_response_tokens_only(tmp_path, bpe_tokenizer):
    tok = bpe_tokenizer
    feats = features(tok)
    trainer = make_trainer(tmp_path, tok, 8, 1)
    batch = trainer.data_collator(feats)
    loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=batch["response_mask"].sum())
    ref = tokenize_prompt_and_output(PROMPTS, OUTPUTS, tok)
    lp = get_response_log_probs(trainer.model, ref["input_ids"], ref["labels"])["log_probs"]
    expected = -(lp * ref["response_mask"]).sum() / ref["response_mask"].sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # prompt tokens carry no gradient signal: changing a prompt-only label leaves the loss unchanged
    batch2 = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    batch2["labels"][~batch2["response_mask"]] = 5
    loss2 = trainer.compute_loss(trainer.model, batch2, num_items_in_batch=batch["response_mask"].sum())
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_sequence_loss_matches_sft_microbatch_formula(tmp_path, bpe_tokenizer):
    tok = bpe_tokenizer
    feats = features(tok)
    trainer = make_trainer(tmp_path, tok, 8, 1, "sequence")
    trainer.args.normalize_constant = 4.0
    batch = trainer.data_collator(feats)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    ref = tokenize_prompt_and_output(PROMPTS, OUTPUTS, tok)
    lp = get_response_log_probs(trainer.model, ref["input_ids"], ref["labels"])["log_probs"]
    expected = -(lp * ref["response_mask"]).sum() / (4.0 * 8 * 1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_collator_pads_right_and_masks_labels(bpe_tokenizer):
    collate = PadToLongestCollator(pad_token_id=bpe_tokenizer.pad_token_id)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [6, 7, 8], "response_mask": [False, True, True]},
                     {"input_ids": [9], "labels": [10], "response_mask": [True]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, bpe_tokenizer.pad_token_id] * 1 + [bpe_tokenizer.pad_token_id]]
    assert batch["labels"].tolist() == [[-100, 7, 8], [10, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
