"""`SFTTrainer`: transformers' Trainer with a masked NLL over response tokens.

Only ``compute_loss`` (the loss and its metrics), ``get_batch_samples`` (counting response
tokens for normalisation) and ``log`` (adding the metrics) are overridden; the loop, the
optimizer, schedules, clipping, mixed precision and checkpoints are the Trainer's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Trainer

from hf_sft.core import compute_entropy


@dataclass
class PadToLongestCollator:
    """Right-pads a batch of pre-shifted examples to its longest row.

    Emits ``labels`` with -100 outside the response (the HF convention, so tools that count
    ``labels != -100`` see response tokens) and the boolean ``response_mask`` the loss uses.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), -100, dtype=torch.long)
        response_mask = torch.zeros((batch, longest), dtype=torch.bool)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            mask = torch.as_tensor(f["response_mask"], dtype=torch.bool)
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.where(mask, torch.as_tensor(f["labels"], dtype=torch.long), -100)
            response_mask[row, :n] = mask
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "response_mask": response_mask}


class SFTTrainer(Trainer):
    """Trainer whose loss is the NLL of response tokens only.

    ``loss_normalization`` (from ``SFTConfig``):
      - ``token``: sum of response-token NLL / response tokens in the whole optimizer step,
        across gradient-accumulation microbatches and processes (via ``num_items_in_batch``);
      - ``sequence``: the formula of ``sft_microbatch_train_step``, sum / (normalize_constant *
        microbatch size * gradient_accumulation_steps).
    """

    # compute_loss scales for gradient accumulation itself, in both normalisations.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metric_sums = self._zero_metrics()

    @staticmethod
    def _zero_metrics() -> dict[str, float]:
        return {"entropy_sum": 0.0, "correct": 0.0, "response_tokens": 0.0, "nll_sum": 0.0}

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Count response tokens of the whole optimizer step, summed over processes."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        count = sum(b["response_mask"].sum() for b in batch_samples).to(device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return batch_samples, count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        response_mask = inputs["response_mask"]
        labels = inputs["labels"].clamp(min=0)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        logits = outputs.logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        mask = response_mask.to(log_probs.dtype)
        nll_sum = -(log_probs * mask).sum()

        if self.args.loss_normalization == "token":
            denominator = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            # DDP averages gradients over processes; the denominator already counts all of them.
            loss = nll_sum / denominator.clamp(min=1) * self.accelerator.num_processes
        else:
            ga = self.args.gradient_accumulation_steps if model.training else 1
            loss = nll_sum / (self.args.normalize_constant * logits.shape[0] * ga)

        if model.training:
            self._accumulate_metrics(logits, labels, response_mask, nll_sum)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _accumulate_metrics(self, logits, labels, response_mask, nll_sum):
        """Entropy and token accuracy on the same shifted response positions as the loss."""
        selected = logits[response_mask]
        self._metric_sums["entropy_sum"] += compute_entropy(selected).sum().item()
        self._metric_sums["correct"] += (selected.argmax(-1) == labels[response_mask]).sum().item()
        self._metric_sums["response_tokens"] += response_mask.sum().item()
        self._metric_sums["nll_sum"] += nll_sum.item()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metric_sums["response_tokens"] > 0:
            sums = torch.tensor(list(self._metric_sums.values()), dtype=torch.float64, device=self.args.device)
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            entropy_sum, correct, tokens, nll_sum = sums.tolist()
            logs["entropy"] = round(entropy_sum / tokens, 4)
            logs["token_accuracy"] = round(correct / tokens, 4)
            logs["response_nll_per_token"] = round(nll_sum / tokens, 4)
            logs["num_response_tokens"] = int(tokens)
            self._metric_sums = self._zero_metrics()
        super().log(logs, start_time)
