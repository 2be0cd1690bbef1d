"""The GPU check for the day a device is lent: one command, one table, under 8 minutes on one H100/H200.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (torch, transformers, accelerate only)
    bash benchmarks/gpu_check.sh --cpu-smoke     # the same code paths on a tiny model, seconds, on CPU

Needs nothing downloaded and no vLLM: Qwen2.5-Math-1.5B's architecture at random init, synthetic
r1_zero-shaped examples (a shared 91-token prompt prefix, a varying tail, responses of varying
length: ~750 packed tokens per 4 examples, as the MATH traces), a BPE tokenizer trained on the spot.
Every check is isolated: one that fails prints FAIL with its error and the others still run; every
timing follows warm-up runs of the same work. Checks:

  gemm          measured dense bf16 matmul TFLOP/s (the realistic MFU denominator)
  train:4x8     the old MATH step: 4 examples x 8 accumulation, gradient checkpointing, all optimisations on,
                fp32 master weights + bf16 autocast: tokens/s, MFU, peak memory
  train:32x1    recipes/base_math.yaml now: 32 x 1, no checkpointing (the same optimizer step)
  train:off     4 x 8 with checkpointing and all four optimisations off (padded batch, full logits)
  train:losses  the three runs' per-step losses agree (the same examples, the same steps)
  syncs         host reads during one 32 x 1 step (hf_sft.training.host_reads): 0 inside forward+backward
  attention     varlen_attn (one call per layer) vs the per-example SDPA loop vs padded SDPA: same loss, time
  head          fused LM head vs plain head at a 32 x 1 microbatch's response tokens: NLL, grads, time, peak
  snapshot      the 1.5B policy in bf16: GPU -> pageable host memory, -> pinned host memory, -> /dev/shm slot
  generate      hf-backend generation of 64 problems (greedy, random weights: runs to max_new_tokens)

MFU is honest: model FLOPs of the work the recipe asks for (each packed row's tokens, so a shared
prefix once per microbatch; attention over the keys each query sees; the LM head at response
positions only), over the step's wall time, against 989 TFLOP/s and against the measured gemm. The
hardware FLOPs (adding the recompute of gradient checkpointing) are printed beside.
Written without a GPU to run it on (no device was lent so far); the CPU smoke runs in the tests.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

H100_BF16_PEAK = 989e12  # dense bf16 TFLOP/s of an H100/H200 SXM

QWEN25_MATH_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                       rope_theta=10000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, max_position_embeddings=512, tie_word_embeddings=True)

# Sizes per mode: the GPU run is sized to fit 8 minutes with margin (estimate per row in docs/benchmarks.md);
# the smoke run to seconds. prompt = the shared prefix, tail = the per-example rest of the prompt.
SIZES = {
    "gpu": dict(prompt=91, tail=(10, 40), response=(60, 220), warmup=2, steps=4, head_tokens=4096, attn_layers=4,
                attn_batch=32, gen_problems=64, gen_tokens=256, gemm=8192),
    "smoke": dict(prompt=12, tail=(2, 6), response=(4, 16), warmup=1, steps=1, head_tokens=256, attn_layers=2,
                  attn_batch=8, gen_problems=8, gen_tokens=8, gemm=256),
}
# (name, microbatch, accumulation, gradient checkpointing, optimisations on): the recipe's two step shapes
TRAIN_ROWS = (("train:4x8", 4, 8, True, True), ("train:32x1", 32, 1, False, True), ("train:off", 4, 8, True, False))


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, check: str, status: str, detail: str) -> None:
        self.rows.append((check, status, detail))
        print(f"[gpu_check] {check}: {status} {detail}", flush=True)

    def markdown(self) -> str:
        lines = ["| check | result | measured |", "| --- | --- | --- |"]
        lines += [f"| {c} | {s} | {d} |" for c, s, d in self.rows]
        return "\n".join(lines)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a on CPU"


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- inputs


def build_tokenizer(workdir: Path):
    from transformers import AutoTokenizer

    from hf_sft.data.builtin_tokenizer import build_bpe_tokenizer

    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(f"User: What is {a} + {b}? Assistant: <think> {a} + {b} = {a + b} </think> "
                                f"<answer> {a + b} </answer>" for a in range(40) for b in range(0, 40, 7)))
    build_bpe_tokenizer(workdir / "tokenizer", [corpus], vocab_size=400)
    return AutoTokenizer.from_pretrained(workdir / "tokenizer")


def build_config(cfg: dict, attn: str = "sdpa", layers: int | None = None):
    from transformers import Qwen2Config

    config = Qwen2Config(**{**cfg, **({"num_hidden_layers": layers} if layers else {})})
    config._attn_implementation = attn
    return config


def build_model(config, device, dtype, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it lives: seconds for 1.5B on a GPU
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=config._attn_implementation)


def synthetic_examples(n: int, size: dict, vocab: int, seed: int = 0) -> list[dict]:
    """Pre-shifted examples like data.py's: one shared prompt prefix, a varying tail, responses of varying length."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1, vocab, (size["prompt"],), generator=g)
    out = []
    for _ in range(n):
        tail = torch.randint(1, vocab, (int(torch.randint(*size["tail"], (1,), generator=g)),), generator=g)
        lo, hi = size["response"]
        response = torch.randint(1, vocab, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g)
        tokens = torch.cat([prefix, tail, response]).tolist()
        n_prompt = len(prefix) + len(tail)
        out.append({"input_ids": tokens[:-1], "labels": tokens[1:],
                    "response_mask": [0] * (n_prompt - 1) + [1] * len(response)})
    return out


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def sft_args(out: str, device, size: dict, microbatch: int, accumulation: int, checkpointing: bool,
             optimised: bool, steps: int | None = None, **extra):
    from hf_sft.config import SFTConfig

    options = dict(output_dir=out, per_device_train_batch_size=microbatch, gradient_accumulation_steps=accumulation,
                   max_steps=steps or size["warmup"] + size["steps"], learning_rate=2e-5,
                   lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=True,
                   gradient_checkpointing=checkpointing, logging_steps=1, save_strategy="no", report_to="none",
                   seed=0, dataloader_num_workers=0, use_cpu=device.type == "cpu", disable_tqdm=True,
                   padding_free=optimised, shared_prefix=optimised, response_only_lm_head=optimised,
                   fused_lm_head=optimised)
    return SFTConfig(**{**options, **extra})


def step_flops(config, rows: list[dict], microbatch: int, share_prefix: bool, checkpointing: bool,
               response_only: bool) -> tuple[float, float]:
    """(model, hardware) FLOPs of one optimizer step over ``rows``, from the packed layout the trainer sees.

    Model FLOPs: 6 x body parameters x packed tokens (a shared prefix counted once per microbatch),
    attention 3 x 4 x q_dim per (query, visible key) pair per layer, the LM head 6 x H x V at response
    positions only. Hardware adds what the run also computes: the forward again under checkpointing, and
    the head at every position when response_only_lm_head is off.
    """
    from hf_sft.training.packing import unpad
    from hf_sft.training.trainer import PadToLongestCollator

    h, n_layers = config.hidden_size, config.num_hidden_layers
    inter, vocab = config.intermediate_size, config.vocab_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    body = n_layers * (h * q + 2 * h * kv + q * h + 3 * h * inter)
    tokens = keys = responses = 0
    for i in range(0, len(rows), microbatch):
        packed = unpad(PadToLongestCollator(0)(rows[i:i + microbatch]), share_prefix=share_prefix)
        p = packed["shared_prefix_length"]
        for j, n in enumerate(packed["packed_seq_lens"]):
            keys += n * (n + 1) // 2 + (n * p if j > 0 else 0)
        tokens += sum(packed["packed_seq_lens"])
        responses += int(packed["response_mask"].sum())
    attention = 4 * q * n_layers * keys
    model = 6 * body * tokens + 3 * attention + 6 * h * vocab * responses
    hardware = model + (2 * body * tokens + attention if checkpointing else 0)
    if not response_only:
        hardware += 6 * h * vocab * (tokens - responses)
    return model, hardware


# ---------------------------------------------------------------------------------------------- checks


def check_gemm(table: Table, device, size: dict) -> float | None:
    n = size["gemm"]
    dtype = torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    tflops = 2 * n ** 3 * reps / (time.perf_counter() - start)
    table.add("gemm", "ok", f"bf16 {n}x{n}: {tflops / 1e12:.3g} TFLOP/s ({tflops / H100_BF16_PEAK:.0%} of 989)")
    return tflops


class StepTimer:
    """Wall time of the steps after the warm-up ones (synchronised), up to ``last`` (later steps are not timed)."""

    def __init__(self, device, warmup: int, last: int):
        self.device, self.warmup, self.last, self.times, self._t0 = device, warmup, last, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        if self.warmup < state.global_step <= self.last:
            self.times.append(time.perf_counter() - self._t0)

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


class CountReads:
    """Counts host reads (hf_sft.training.host_reads) during step ``step`` and its logging, split into
    inside ``training_step`` (forward + backward) and the rest of the optimizer step."""

    def __init__(self, trainer, step: int):
        from hf_sft.training.host_reads import HostReadCounter

        self.reads, self.step, self._on = HostReadCounter(), step, False
        inner = trainer.training_step

        def training_step(*args, **kwargs):
            self.reads.phase = "forward+backward"
            try:
                return inner(*args, **kwargs)
            finally:
                self.reads.phase = "step"

        trainer.training_step = training_step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step and not self._on:
            self.reads.phase = "step"
            self.reads.__enter__()
            self._on = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._on:
            self.reads.__exit__(None, None, None)
            self._on = False

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def check_training(table: Table, device, size: dict, cfg: dict, tokenizer, workdir: Path, gemm_tflops):
    from hf_sft.core import pad_token_id
    from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer

    config = build_config(cfg)
    steps = size["warmup"] + size["steps"]
    rows = synthetic_examples(32 * (steps + 1), size, min(cfg["vocab_size"], len(tokenizer)))
    model = build_model(config, device, torch.float32)  # fp32 master weights, as base_math.yaml
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses, reads = {}, None
    for name, microbatch, accumulation, checkpointing, optimised in TRAIN_ROWS:
        try:
            model.load_state_dict(initial)
            peak_reset(device)
            counted = name == "train:32x1"  # one extra, untimed step under the host-read counter
            args = sft_args(str(workdir / name), device, size, microbatch, accumulation, checkpointing, optimised,
                            steps=steps + 1 if counted else steps)
            trainer = SFTTrainer(model=model, args=args, train_dataset=ListDataset(rows),
                                 data_collator=PadToLongestCollator(pad_token_id(tokenizer)),
                                 processing_class=tokenizer)
            timer = StepTimer(device, size["warmup"], steps)
            trainer.add_callback(timer)
            if counted:
                counter = CountReads(trainer, steps + 1)
                trainer.add_callback(counter)
            trainer.train()
            if counted:
                reads = counter.reads
            hist = [h["loss"] for h in trainer.state.log_history if "loss" in h][:steps]
            losses[name] = hist
            step_s = sorted(timer.times)[len(timer.times) // 2]
            model_f, hw_f = step_flops(config, rows[:32], microbatch, trainer._share_prefix, checkpointing,
                                       optimised)
            packed_tokens = sum(len(r["input_ids"]) for r in rows[:32])
            if device.type == "cuda":
                mfu = (f"MFU {model_f / step_s / H100_BF16_PEAK:.1%} of 989 "
                       f"(hardware {hw_f / step_s / H100_BF16_PEAK:.1%})")
                if gemm_tflops:
                    mfu += f", {model_f / step_s / gemm_tflops:.1%} of gemm"
            else:
                mfu = f"MFU n/a on CPU ({model_f / step_s / 1e9:.2f} model GFLOP/s)"
            table.add(name, "ok", f"{trainer._attn_implementation or 'sdpa padded'}: median step {step_s:.3f}s "
                                  f"({packed_tokens / step_s:,.0f} example tokens/s), {mfu}, peak {peak_gib(device)}, "
                                  f"loss {hist[0]:.4f} -> {hist[-1]:.4f}")
            del trainer
        except Exception as err:  # noqa: BLE001 - the table reports it, the other checks run
            table.add(name, "FAIL", f"{type(err).__name__}: {err}".replace("\n", " ")[:300])
            traceback.print_exc()
        free_memory()
    if len(losses) == len(TRAIN_ROWS):
        ref = losses["train:4x8"]
        worst = max(abs(a - b) / max(abs(b), 1e-9) for other in losses.values() for a, b in zip(other, ref))
        table.add("train:losses", "ok" if worst < 1e-2 else "FAIL",
                  f"4x8 vs 32x1 vs off, {len(ref)} steps: max rel diff {worst:.1e} (bf16 autocast)")
    if reads is not None:
        inside = reads.count("forward+backward")
        rest = ", ".join(f"{owner} {op} {where} x{n}" for owner, op, where, n in reads.summary("step")
                         if not where.startswith("torch/utils/data/"))
        table.add("syncs", "ok" if inside == 0 else "FAIL",
                  f"one 32x1 step: {inside} host reads inside forward+backward; rest of the step: {rest or 'none'}")
    del model, initial
    free_memory()


def check_attention(table: Table, device, size: dict, cfg: dict, tokenizer):
    """One packed row through the varlen implementations and the padded batch through SDPA: same loss, time each."""
    from hf_sft.core import pad_token_id
    from hf_sft.training.packing import VARLEN_SDPA, VARLEN_TORCH, model_kwargs, torch_varlen_available, unpad
    from hf_sft.training.trainer import PadToLongestCollator

    rows = synthetic_examples(size["attn_batch"], size, min(cfg["vocab_size"], len(tokenizer)), seed=1)
    padded = PadToLongestCollator(pad_token_id(tokenizer))(rows)
    packed = unpad(padded, share_prefix=True)
    packed = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in packed.items()}
    padded = {k: v.to(device) for k, v in padded.items()}
    model = build_model(build_config(cfg, "sdpa", size["attn_layers"]), device, torch.bfloat16)
    results = {}
    runs = [("padded sdpa", "sdpa"), ("sdpa loop", VARLEN_SDPA)]
    if torch_varlen_available(device):
        runs.append(("varlen_attn", VARLEN_TORCH))
    for label, impl in runs:
        model.set_attn_implementation(impl)

        def step():
            model.zero_grad(set_to_none=True)
            # the body, then the head at response positions only, alike for all three: attention is what differs
            if impl == "sdpa":
                hidden = model.model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
                hidden = hidden.last_hidden_state[padded["response_mask"]]
                targets = padded["labels"][padded["response_mask"]]
            else:
                hidden = model.model(**model_kwargs(packed, model.config)).last_hidden_state[0]
                hidden = hidden.index_select(0, packed["response_index"])
                targets = packed["labels"][0].index_select(0, packed["response_index"])
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden).float(), targets)
            loss.backward()
            return loss

        for _ in range(2):
            step()
        sync(device)
        start = time.perf_counter()
        reps = 5 if device.type == "cuda" else 1
        for _ in range(reps):
            loss = step()
        sync(device)
        results[label] = (loss.item(), (time.perf_counter() - start) / reps)
    ref = results["padded sdpa"][0]
    worst = max(abs(v[0] - ref) / abs(ref) for v in results.values())
    why = "no CUDA" if device.type != "cuda" else f"torch {torch.__version__}"
    missing = "" if "varlen_attn" in results else f" (varlen_attn: not available here: {why})"
    detail = ", ".join(f"{k} {v[1] * 1e3:.1f} ms" for k, v in results.items())
    table.add("attention", "ok" if worst < 2e-2 else "FAIL",
              f"{size['attn_layers']} layers, {len(rows)} examples fwd+bwd: {detail}; loss max rel diff "
              f"{worst:.1e} (bf16){missing}")


def check_head(table: Table, device, size: dict, cfg: dict):
    from hf_sft.training.losses import auto_chunk_tokens, fused_linear_nll, plain_linear_nll

    n, h, v = size["head_tokens"], cfg["hidden_size"], cfg["vocab_size"]
    torch.manual_seed(0)
    hidden0 = torch.randn(n, h, device=device, dtype=torch.bfloat16)
    weight0 = (torch.randn(v, h, device=device) * 0.02).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), device=device)
    result = {}
    for name, fn in (("plain", plain_linear_nll), ("fused", fused_linear_nll)):
        def run():
            hidden, weight = hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()
            out = fn(hidden, weight, None, targets)
            out.nll_sum.backward()
            return out, hidden, weight

        run()  # warm-up: kernels chosen, allocator warmed
        free_memory()
        peak_reset(device)
        sync(device)
        start = time.perf_counter()
        out, hidden, weight = run()
        sync(device)
        result[name] = (out.nll_sum.item(), hidden.grad.float(), weight.grad.float(), time.perf_counter() - start,
                        peak_gib(device))
        del out, hidden, weight
        free_memory()
    (pn, ph, pw, pt, pm), (fn_, fh, fw, ft, fm) = result["plain"], result["fused"]
    rel_nll = abs(fn_ - pn) / abs(pn)
    rel_g = max(((fh - ph).norm() / ph.norm()).item(), ((fw - pw).norm() / pw.norm()).item())
    ok = rel_nll < 1e-3 and rel_g < 2e-2
    table.add("head", "ok" if ok else "FAIL",
              f"{n} tokens x {v} (chunk {auto_chunk_tokens(v, device=device)}): nll rel {rel_nll:.1e}, "
              f"grad rel {rel_g:.1e}; fused {ft:.3f}s peak {fm}, plain {pt:.3f}s peak {pm}")


def _timed_copies(device, state, dtype, pinned: bool, reps: int = 2) -> float:
    """Median seconds to copy ``state`` (cast to ``dtype`` on the device) into preallocated host buffers."""
    pin = pinned and device.type == "cuda"
    buffers = {k: torch.empty(t.shape, dtype=dtype, pin_memory=pin) for k, t in state.items()}
    times = []
    for _ in range(reps + 1):  # the first one warms up
        sync(device)
        start = time.perf_counter()
        for k, t in state.items():
            buffers[k].copy_(t.detach().to(dtype), non_blocking=pin)
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def check_snapshot(table: Table, device, cfg: dict):
    from hf_sft.evaluation.snapshots import SharedWeights, shm_free_bytes
    from hf_sft.generation.vllm import state_dict_for_push

    model = build_model(build_config(cfg), device, torch.float32)
    state = state_dict_for_push(model)
    _, nbytes = SharedWeights.plan(state, torch.bfloat16)
    gib = nbytes / 2**30
    pageable = _timed_copies(device, state, torch.bfloat16, pinned=False)
    pinned = _timed_copies(device, state, torch.bfloat16, pinned=True) if device.type == "cuda" else None
    copies = f"pageable {pageable:.3f}s ({gib / pageable:.1f} GiB/s)"
    copies += f", pinned {pinned:.3f}s ({gib / pinned:.1f} GiB/s)" if pinned else ", pinned n/a on CPU"
    free = shm_free_bytes()
    if free < nbytes:
        table.add("snapshot", "SKIP", f"{copies}; the /dev/shm slot needs {gib:.2f} GiB, /dev/shm has "
                                      f"{free / 2**30:.2f} GiB free (docker: --shm-size=16g or --ipc=host)")
        return
    sync(device)
    start = time.perf_counter()
    slot = SharedWeights.allocate(state, torch.bfloat16)
    slot.copy_from(state)
    first = time.perf_counter() - start
    start = time.perf_counter()
    slot.copy_from(state)
    again = time.perf_counter() - start
    table.add("snapshot", "ok", f"{nbytes / 2**20:,.1f} MiB bf16 from fp32 on {device.type}: {copies}; /dev/shm slot "
                                f"first {first:.3f}s (allocate + copy), reused {again:.3f}s")
    del slot, state, model
    free_memory()


def check_generate(table: Table, device, size: dict, cfg: dict, tokenizer):
    from hf_sft.generation.base import SamplingSettings
    from hf_sft.generation.hf import HFGenerationBackend

    model = build_model(build_config(cfg), device, torch.bfloat16).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [f"User: What is {i} + {i + 7}? Assistant: <think>" for i in range(size["gen_problems"])]
    backend = HFGenerationBackend(model, tokenizer, batch_size=64, show_progress=False)
    sampling = SamplingSettings(temperature=0.0, max_new_tokens=size["gen_tokens"], stop=["</answer>"])
    sync(device)
    start = time.perf_counter()
    out = backend.generate(prompts, sampling)
    sync(device)
    seconds = time.perf_counter() - start
    tokens = sum(g.num_tokens for g in out)
    table.add("generate", "ok" if len(out) == len(prompts) else "FAIL",
              f"{len(out)} problems, {tokens} new tokens in {seconds:.1f}s "
              f"({tokens / seconds:,.0f} tokens/s, hf generate)")
    del model, backend
    free_memory()


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU: the same code paths, seconds")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--only", nargs="*", help="run only these checks (gemm train attention head snapshot generate)")
    args = parser.parse_args(argv)

    if args.cpu_smoke:
        device, cfg, size = torch.device("cpu"), TINY, SIZES["smoke"]
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; run with --cpu-smoke on CPU", file=sys.stderr)
            return 2
        device, cfg, size = torch.device("cuda"), QWEN25_MATH_15B, SIZES["gpu"]
    wanted = set(args.only or ["gemm", "train", "attention", "head", "snapshot", "generate"])
    table = Table()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    import transformers

    from hf_sft.training.packing import torch_varlen_available

    varlen = "yes" if torch_varlen_available(device) else "no (per-example SDPA)"
    table.add("machine", "ok", f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; "
                               f"torch varlen_attn on this device: {varlen}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_sft_gpu_check_") as tmp:
        workdir = Path(tmp)
        tokenizer = build_tokenizer(workdir)
        gemm = None
        checks = [("gemm", lambda: check_gemm(table, device, size)),
                  ("train", lambda: check_training(table, device, size, cfg, tokenizer, workdir, gemm)),
                  ("attention", lambda: check_attention(table, device, size, cfg, tokenizer)),
                  ("head", lambda: check_head(table, device, size, cfg)),
                  ("snapshot", lambda: check_snapshot(table, device, cfg)),
                  ("generate", lambda: check_generate(table, device, size, cfg, tokenizer))]
        for check, run in checks:
            if check not in wanted:
                continue
            try:
                value = run()
                if check == "gemm":
                    gemm = value
            except Exception as err:  # noqa: BLE001 - the table reports it, the other checks run
                table.add(check, "FAIL", f"{type(err).__name__}: {err}".replace("\n", " ")[:300])
                traceback.print_exc()
            free_memory()
    table.add("total", "ok", f"{time.perf_counter() - start:.0f}s")
    text = table.markdown()
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if any(status == "FAIL" for _, status, _ in table.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
