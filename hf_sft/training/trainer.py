"""`SFTTrainer`: transformers' Trainer with a masked NLL over response tokens.

Only ``compute_loss`` (the loss and its metrics), ``get_batch_samples`` (counting response
tokens for normalisation) and ``log`` (adding the metrics) are overridden; the loop, the
optimizer, schedules, clipping, mixed precision and checkpoints are the Trainer's own.

Four exact optimisations sit inside ``compute_loss``, each a recipe switch in ``SFTConfig``
(measured in docs/benchmarks.md): ``padding_free`` (the padded microbatch is unpadded into one
row, attention kept within each example: ``hf_sft/training/packing.py``), ``shared_prefix`` (the prompt
prefix common to the microbatch's examples is computed once), ``response_only_lm_head`` (the LM
head sees only the hidden states of response positions) and ``fused_lm_head`` (head, NLL,
entropy and accuracy chunk by chunk, never the full logits: ``hf_sft/training/losses.py``).

No device->host reads inside a microbatch's forward and backward: with ``padding_free`` the
collator packs the microbatch on the CPU (``PackingCollator``) and the loss gathers response
positions with CPU-built indices; the metrics are summed on the device and read once per logging
step (``log``). ``tests/training/test_packing.py`` counts them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import torch
from transformers import Trainer

from hf_sft.core import compute_entropy
from hf_sft.training.losses import fused_linear_nll, plain_linear_nll
from hf_sft.training.packing import PackingCollator, enable_padding_free, is_packed, model_kwargs, shares_prefix, unpad

logger = logging.getLogger(__name__)

# Config attributes of models whose logits are not plain hidden @ W.T (+ b): the hidden-state
# paths below would compute a different distribution, so they are refused for such models.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                     "lm_head_multiplier")


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


def reduce_gradients_in_fp32(fsdp_plugin) -> bool:
    """FSDP's gradient reduction in fp32 under bf16 mixed precision; True if the policy was changed.

    accelerate gives FSDP ``param_dtype = reduce_dtype = bf16`` for ``mixed_precision: bf16``
    (``FullyShardedDataParallelPlugin.set_mixed_precision``, called by ``AcceleratorState``; its launcher has no
    key for the reduce dtype). Over fp32 master weights the bf16 reduce-scatter rounds every gradient to 8
    mantissa bits before it reaches the fp32 optimizer. Costs twice the gradient communication.
    ``accelerate.utils.fsdp_utils.fsdp2_prepare_model`` reads the policy when ``train()`` shards the model.
    """
    policy = getattr(fsdp_plugin, "mixed_precision_policy", None)
    if policy is None or getattr(policy, "reduce_dtype", None) in (None, torch.float32):
        return False
    fsdp_plugin.mixed_precision_policy = dataclasses.replace(policy, reduce_dtype=torch.float32)
    logger.info("FSDP mixed precision: parameters in %s for compute, gradients reduced in float32 (was %s)",
                policy.param_dtype, policy.reduce_dtype)
    return True


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
        self._metric_sums = None  # (4,) float64 on the device, read back in log() only
        if self._uses_hidden_states():
            config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
                else self.model.config
            transforms = [k for k in _LOGIT_TRANSFORMS if getattr(config, k, None) not in (None, 1.0)]
            if transforms:
                raise ValueError(f"the model scales its logits ({', '.join(transforms)}); response_only_lm_head "
                                 "and fused_lm_head would skip that: set both to false for this model")
        self._warn_if_fsdp_was_not_applied()
        if getattr(self, "is_fsdp_enabled", False):  # before train() shards the model with this policy
            reduce_gradients_in_fp32(self.accelerator.state.fsdp_plugin)
        if self._uses_hidden_states() and self.weights_are_sharded():
            # FSDP / ZeRO-3 gather the head's weight only inside the model's forward; ours reads it after.
            logger.warning("response_only_lm_head and fused_lm_head are off under FSDP / DeepSpeed ZeRO-3 (the LM "
                           "head's weight is sharded outside the model's forward); the plain loss path is used")
            self.args.response_only_lm_head = self.args.fused_lm_head = False
        self._attn_implementation = None
        self._share_prefix = False
        if getattr(self.args, "padding_free", False):
            self._attn_implementation = enable_padding_free(self.model, self.args.device)
            self._share_prefix = bool(getattr(self.args, "shared_prefix", False)) and shares_prefix(
                self._attn_implementation)
            if self.data_collator is not None and not isinstance(self.data_collator, PackingCollator):
                self.data_collator = PackingCollator(self.data_collator, share_prefix=self._share_prefix)

    def _warn_if_fsdp_was_not_applied(self) -> None:
        """accelerate turns FSDP on only for GPU-type devices; elsewhere the request is silently dropped."""
        asked = bool(self.args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if asked and not getattr(self, "is_fsdp_enabled", False):
            logger.warning("FSDP was asked for (fsdp / ACCELERATE_USE_FSDP) but accelerate runs as %s: it enables FSDP "
                           "only on GPU-type devices, so every process holds the full model (plain %s).",
                           self.accelerator.distributed_type.value,
                           "DDP" if self.args.world_size > 1 else "single-process training")

    def weights_are_sharded(self) -> bool:
        """FSDP or ZeRO-3: each rank holds a shard; a forward (and a full state dict) needs every rank."""
        if getattr(self, "is_fsdp_enabled", False):
            return True
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None) if self.is_deepspeed_enabled else None
        return plugin is not None and plugin.zero_stage == 3

    def _uses_hidden_states(self) -> bool:
        return bool(getattr(self.args, "response_only_lm_head", False) or getattr(self.args, "fused_lm_head", False))

    METRICS = ("entropy_sum", "correct", "response_tokens", "nll_sum")

    def metric_sums(self) -> dict[str, float]:
        """The sums since the last log, read back to the host (one copy; a sync on GPU)."""
        if self._metric_sums is None:
            return dict.fromkeys(self.METRICS, 0.0)
        return dict(zip(self.METRICS, self._metric_sums.tolist()))

    def reset_metrics(self) -> None:
        self._metric_sums = None

    def _add_metrics(self, *values: torch.Tensor) -> None:
        """Add this microbatch's four sums on the device: no host read per microbatch."""
        sums = torch.stack([v.detach().double() for v in values])
        self._metric_sums = sums if self._metric_sums is None else self._metric_sums + sums

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Count response tokens of the whole optimizer step, summed over processes."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        count = sum(b["response_mask"].sum() for b in batch_samples).to(device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return batch_samples, count

    def _model_inputs(self, inputs) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Model kwargs, the labels, response mask and response positions aligned with the model's
        token positions, and the number of examples.

        Training batches arrive packed by ``PackingCollator``; a padded batch handed to
        ``compute_loss`` directly is packed here (correct, but with host reads on GPU).
        """
        if getattr(self.args, "padding_free", False):
            packed = inputs if is_packed(inputs) else unpad(inputs, share_prefix=self._share_prefix)
            config = self.accelerator.unwrap_model(self.model).config.get_text_config()
            return (model_kwargs(packed, config), packed["labels"], packed["response_mask"], packed["response_index"],
                    packed["num_sequences"])
        model_inputs = {"input_ids": inputs["input_ids"]}
        if "attention_mask" in inputs:
            model_inputs["attention_mask"] = inputs["attention_mask"]
        return model_inputs, inputs["labels"], inputs["response_mask"], None, inputs["input_ids"].shape[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs, labels, response_mask, response_index, num_sequences = self._model_inputs(inputs)
        labels = labels.clamp(min=0)
        if self._uses_hidden_states():
            outputs, head = self._head_from_hidden_states(model, model_inputs, labels, response_mask, response_index)
            nll_sum = head.nll_sum
        else:
            outputs = model(**model_inputs, use_cache=False)
            logits = outputs.logits
            log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            nll_sum = -(log_probs * response_mask.to(log_probs.dtype)).sum()
            head = None

        if self.args.loss_normalization == "token":
            denominator = num_items_in_batch if num_items_in_batch is not None else response_mask.sum()
            # DDP averages gradients over processes; the denominator already counts all of them.
            loss = nll_sum / denominator.clamp(min=1) * self.accelerator.num_processes
        else:
            ga = self.args.gradient_accumulation_steps if model.training else 1
            loss = nll_sum / (self.args.normalize_constant * num_sequences * ga)

        if model.training:
            if head is None:
                self._accumulate_metrics(logits, labels, response_mask, nll_sum)
            else:
                self._accumulate_head_metrics(head, response_mask, nll_sum)
        return (loss, outputs) if return_outputs else loss

    def _head_from_hidden_states(self, model, model_inputs, labels, response_mask, response_index=None):
        """Run the body only (no logits), then the LM head on the positions the loss reads.

        The call still goes through ``model`` (DDP, compile and hooks see an ordinary forward);
        ``logits_to_keep`` with no index makes the model's own head a no-op, and the final hidden
        states come back as ``hidden_states[-1]`` (after the last norm).
        """
        no_positions = torch.empty(0, dtype=torch.long, device=labels.device)
        outputs = model(**model_inputs, use_cache=False, logits_to_keep=no_positions, output_hidden_states=True)
        lm_head = self.accelerator.unwrap_model(model).get_output_embeddings()
        weight, bias = lm_head.weight, lm_head.bias
        # fp32 master weights under bf16/fp16 mixed precision: autocast is off out here, so do what it does
        # to the model's own head inside the forward: compute in the half dtype (the casts are differentiable;
        # the gradient reaches the fp32 weight).
        half = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        if half is not None and weight.dtype == torch.float32:
            weight = weight.to(half)
            bias = None if bias is None else bias.to(half)
        # Under mixed precision accelerate returns the forward's outputs upcast to fp32: back to the head's
        # compute dtype (exact for a bf16 model, whose norm produced bf16 values).
        hidden = outputs.hidden_states[-1].to(weight.dtype)
        if self.args.response_only_lm_head:
            if response_index is None:  # a padded batch: the boolean index reads the mask back (a sync on GPU)
                hidden, targets = hidden[response_mask], labels[response_mask]
            else:  # a packed row: positions from the collator, index_select needs no host read
                hidden, targets = hidden[0].index_select(0, response_index), labels[0].index_select(0, response_index)
            weights = None
        else:
            hidden, targets = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
            weights = response_mask.reshape(-1).to(hidden.dtype)
        if self.args.fused_lm_head:
            head = fused_linear_nll(hidden, weight, bias, targets, weights,
                                    chunk_tokens=self.args.lm_head_chunk_size or None)
        else:
            head = plain_linear_nll(hidden, weight, bias, targets, weights)
        if weights is not None:  # statistics of response positions only
            keep = weights.bool()
            head.entropy, head.correct, head.log_probs = head.entropy[keep], head.correct[keep], head.log_probs[keep]
        return outputs, head

    @torch.no_grad()
    def _accumulate_head_metrics(self, head, response_mask, nll_sum):
        """The same sums as ``_accumulate_metrics``, from the per-token statistics the head computed.

        Summed on the device; read back once per logging step.
        """
        self._add_metrics(head.entropy.double().sum(), head.correct.sum(), response_mask.sum(), nll_sum)

    @torch.no_grad()
    def _accumulate_metrics(self, logits, labels, response_mask, nll_sum):
        """Entropy and token accuracy on the same shifted response positions as the loss."""
        selected = logits[response_mask]
        self._add_metrics(compute_entropy(selected).double().sum(),
                          (selected.argmax(-1) == labels[response_mask]).sum(),
                          response_mask.sum(), nll_sum)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metric_sums is not None:
            sums = self._metric_sums.to(self.args.device)
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            entropy_sum, correct, tokens, nll_sum = sums.tolist()
            if tokens > 0:
                logs["entropy"] = round(entropy_sum / tokens, 4)
                logs["token_accuracy"] = round(correct / tokens, 4)
                logs["response_nll_per_token"] = round(nll_sum / tokens, 4)
                logs["num_response_tokens"] = int(tokens)
            self._metric_sums = None
        super().log(logs, start_time)
