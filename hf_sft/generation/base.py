"""The generation interface the evaluator talks to: sampling settings, generations, the backend protocol.

A backend knows models and prompts, not grading: it turns prompts plus sampling settings into
texts, token counts, finish reasons and (where cheap) the mean entropy of each response.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    seed: int = 0
    # vLLM: seed every request (seed + index): a prompt's sample no longer depends on how the engine batches,
    # but vLLM's sampler then draws request by request instead of for the whole batch (slower; docs/benchmarks.md).
    # Off (the default), the engine's seed drives one batched draw: reproducible for the same requests in the
    # same order on the same engine, not per prompt. hf generate has one RNG stream either way.
    per_request_seeds: bool = False
    num_samples: int = 1  # samples per problem (pass@k, maj@k); the evaluator repeats prompts, backends need not know

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (stop string or eos) | "length"
    token_entropy: float | None = None  # mean over the response tokens; None where the backend cannot tell


class GenerationBackend(Protocol):
    """``progress(done, total)``, when given, is called as generations finish (a long eval's progress line)."""

    name: str

    def generate(self, prompts: list[str], sampling: SamplingSettings, progress=None) -> list[Generation]: ...


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Keep text up to and including the first stop string."""
    positions = [(text.find(s), s) for s in stops if s and s in text]
    if not positions:
        return text, False
    index, stop = min(positions)
    return text[: index + len(stop)], True
