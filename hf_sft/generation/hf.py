"""The Hugging Face `generate` backend: batched generation in this process, on the live model."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from hf_sft.core import compute_entropy, pad_token_id
from hf_sft.generation.base import Generation, SamplingSettings, cut_at_stop


class _EntropyRecorder(LogitsProcessor):
    """Records the entropy of the model's own next-token distribution at every step.

    Placed first, it sees raw logits (before temperature/top-p), and keeps one float per row
    per step instead of the full logits that `output_logits=True` would hold.
    """

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(compute_entropy(scores).cpu())
        return scores


class StopInResponse(StoppingCriteria):
    """Stops a row once its *generated* text contains a stop string.

    transformers' ``stop_strings`` match the end of the whole sequence, prompt included, so a prompt
    ending in ``</ans`` followed by a generated ``wer>`` would stop the row although the response
    holds no ``</answer>``. Here only new tokens are decoded: a window of the last few, enough to
    hold any stop string (every token decodes to at least one character), so each step costs
    one short decode per unfinished row.
    """

    def __init__(self, stops: list[str], tokenizer, prompt_length: int):
        self.stops = [s for s in stops if s]
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.window = max((len(s) for s in self.stops), default=0) + 2
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_length:]
        if not self.stops or new.shape[1] == 0:
            return self.done.clone()
        tail = new[:, -self.window:].tolist()
        for row in (~self.done).nonzero().flatten().tolist():
            text = self.tokenizer.decode(tail[row], skip_special_tokens=True)
            if any(stop in text for stop in self.stops):
                self.done[row] = True
        return self.done.clone()


class HFGenerationBackend:
    """Batched, left-padded `model.generate` with a KV cache and stop strings, in this process."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 64, show_progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.show_progress = show_progress

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingSettings, progress=None) -> list[Generation]:
        tok = self.tokenizer
        pad_id = pad_token_id(tok)
        was_training = self.model.training
        self.model.eval()
        results: list[Generation] = []
        starts = range(0, len(prompts), self.batch_size)
        try:
            with torch.random.fork_rng(devices=[] if self.model.device.type == "cpu" else [self.model.device]):
                torch.manual_seed(sampling.seed)
                for start in tqdm(starts, desc="Generating", disable=not self.show_progress, leave=False):
                    results.extend(self._generate_batch(prompts[start : start + self.batch_size], sampling, pad_id))
                    if progress is not None:
                        progress(len(results), len(prompts))
        finally:
            if was_training:
                self.model.train()
        return results

    def _generate_batch(self, prompts: list[str], sampling: SamplingSettings, pad_id: int) -> list[Generation]:
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        finally:
            tok.padding_side = old_side
        recorder = _EntropyRecorder()
        do_sample = sampling.temperature > 0
        out = self.model.generate(
            **enc,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=do_sample,
            temperature=sampling.temperature if do_sample else None,
            top_p=sampling.top_p if do_sample else None,
            top_k=0 if do_sample else None,
            stopping_criteria=StoppingCriteriaList([StopInResponse(sampling.stop or [], tok,
                                                                   enc["input_ids"].shape[1])]),
            pad_token_id=pad_id,
            eos_token_id=tok.eos_token_id,
            logits_processor=LogitsProcessorList([recorder]),
            use_cache=True,
        )
        new_tokens = out[:, enc["input_ids"].shape[1]:].cpu()
        entropies = torch.stack(recorder.steps, dim=1) if recorder.steps else torch.zeros(len(prompts), 0)
        return [self._finish(row, entropies[i], sampling) for i, row in enumerate(new_tokens)]

    def _finish(self, tokens: torch.Tensor, entropy: torch.Tensor, sampling: SamplingSettings) -> Generation:
        """Length and finish reason of one row; after a row stops, generate pads it (pad may equal eos)."""
        tok = self.tokenizer
        ids = tokens.tolist()
        eos = tok.eos_token_id
        first_eos = ids.index(eos) if eos in ids else None
        body = ids[:first_eos] if first_eos is not None else ids
        text, stopped = cut_at_stop(tok.decode(body, skip_special_tokens=True), sampling.stop)
        if stopped:
            # Count only the tokens up to the one that completed the stop string.
            n = len(body)
            while n > 1 and cut_at_stop(tok.decode(body[: n - 1], skip_special_tokens=True), sampling.stop)[1]:
                n -= 1
            finish, n_tokens = "stop", n
        elif first_eos is not None:
            finish, n_tokens = "stop", first_eos + 1
        else:
            finish, n_tokens = "length", len(ids)
        n_entropy = min(n_tokens, entropy.shape[0])
        mean_entropy = float(entropy[:n_entropy].mean()) if n_entropy else None
        return Generation(text=text, num_tokens=n_tokens, finish_reason=finish, token_entropy=mean_entropy)
