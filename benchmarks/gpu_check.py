"""The GPU check for the day a device is lent: one command, one table, under 8 minutes on one H100/H200.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (torch, transformers, accelerate only)
    bash benchmarks/gpu_check.sh --cpu-smoke     # the same code paths on a tiny model, seconds, on CPU

Needs nothing downloaded and no vLLM: Qwen2.5-Math-1.5B's architecture at random init, synthetic
r1_zero-shaped examples (a shared prompt prefix, responses of varying length), a BPE tokenizer
trained on the spot. Every check is isolated: one that fails prints FAIL with its error and the
others still run. Checks:

  gemm        measured dense bf16 matmul TFLOP/s (the realistic MFU denominator)
  train:on    training step with every optimisation on (padding_free, shared_prefix,
              response_only_lm_head, fused_lm_head), fp32 master weights + bf16 autocast, gradient
              checkpointing, as recipes/base_math.yaml: tokens/s, MFU vs 989 TFLOP/s and vs gemm, peak memory
  train:off   the same with all four off (padded batch, full logits); losses must equal train:on's
  masks       padding-free varlen SDPA vs padded eager attention: the same loss on CUDA (bf16)
  head        fused LM head vs plain head: same NLL and gradients, time and peak memory
  snapshot    the eval snapshot of the 1.5B policy into /dev/shm (bf16): first (allocate) and reuse
  generate    hf-backend generation of 64 problems (greedy, random weights: runs to max_new_tokens)

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

# Sizes per mode: the GPU run is sized to fit 8 minutes with margin; the smoke run to seconds.
SIZES = {
    "gpu": dict(batch=8, prompt=120, response=(200, 900), warmup=2, steps=8, head_tokens=8192, mask_layers=4,
                gen_problems=64, gen_tokens=256, gemm=8192),
    "smoke": dict(batch=4, prompt=24, response=(8, 40), warmup=1, steps=2, head_tokens=256, mask_layers=2,
                  gen_problems=8, gen_tokens=8, gemm=256),
}


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
    lo, hi = size["response"]
    out = []
    for _ in range(n):
        tail = torch.randint(1, vocab, (int(torch.randint(4, 16, (1,), generator=g)),), generator=g)
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


def sft_args(out: str, device, size: dict, optimised: bool, **extra):
    from hf_sft.config import SFTConfig

    options = dict(output_dir=out, per_device_train_batch_size=size["batch"],
                   max_steps=size["warmup"] + size["steps"], learning_rate=2e-5, lr_scheduler_type="constant",
                   warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=True, gradient_checkpointing=True,
                   logging_steps=1, save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0,
                   use_cpu=device.type == "cpu", disable_tqdm=True, padding_free=optimised, shared_prefix=optimised,
                   response_only_lm_head=optimised, fused_lm_head=optimised)
    return SFTConfig(**{**options, **extra})


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
    """Wall time of the steps after the warm-up ones (synchronised), and real tokens per step."""

    def __init__(self, device, warmup: int):
        self.device, self.warmup, self.times, self._t0 = device, warmup, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        if state.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._t0)

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def check_training(table: Table, device, size: dict, cfg: dict, tokenizer, workdir: Path, gemm_tflops):
    from bench_sft import flops_per_token

    from hf_sft.core import pad_token_id
    from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer

    config = build_config(cfg)
    n_rows = size["batch"] * (size["warmup"] + size["steps"])
    rows = synthetic_examples(n_rows, size, min(cfg["vocab_size"], len(tokenizer)))
    real_tokens = sum(len(r["input_ids"]) for r in rows) / n_rows * size["batch"]  # per step
    seq = sum(len(r["input_ids"]) for r in rows) / n_rows
    model = build_model(config, device, torch.float32)  # fp32 master weights, as base_math.yaml
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = {}
    for name, optimised in (("train:on", True), ("train:off", False)):
        try:
            model.load_state_dict(initial)
            peak_reset(device)
            trainer = SFTTrainer(model=model, args=sft_args(str(workdir / name), device, size, optimised),
                                 train_dataset=ListDataset(rows),
                                 data_collator=PadToLongestCollator(pad_token_id(tokenizer)),
                                 processing_class=tokenizer)
            timer = StepTimer(device, size["warmup"])
            trainer.add_callback(timer)
            trainer.train()
            hist = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            losses[name] = hist
            step_s = sorted(timer.times)[len(timer.times) // 2]
            tps = real_tokens / step_s
            flops = flops_per_token(config, seq) * tps
            mfu = f"MFU {flops / H100_BF16_PEAK:.1%} of 989" if device.type == "cuda" else "MFU n/a on CPU"
            if gemm_tflops and device.type == "cuda":
                mfu += f", {flops / gemm_tflops:.1%} of gemm"
            table.add(name, "ok", f"{tps:,.0f} tokens/s (median step {step_s:.3f}s), {mfu}, peak {peak_gib(device)}, "
                                  f"loss {hist[0]:.4f} -> {hist[-1]:.4f}")
            del trainer
        except Exception as err:  # noqa: BLE001 - the table reports it, the other checks run
            table.add(name, "FAIL", f"{type(err).__name__}: {err}".replace("\n", " ")[:300])
            traceback.print_exc()
        free_memory()
    if len(losses) == 2:
        on, off = losses["train:on"], losses["train:off"]
        worst = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(on, off))
        table.add("train:losses", "ok" if worst < 1e-2 else "FAIL",
                  f"on vs off, {len(on)} steps: max rel diff {worst:.1e}")
    del model, initial
    free_memory()


def check_masks(table: Table, device, size: dict, cfg: dict, tokenizer, workdir: Path):
    """The padding-free packed row (varlen SDPA) and the padded batch (eager masks): the same loss."""
    from hf_sft.core import pad_token_id
    from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer

    rows = synthetic_examples(size["batch"], size, min(cfg["vocab_size"], len(tokenizer)), seed=1)
    batch = PadToLongestCollator(pad_token_id(tokenizer))(rows)
    batch = {k: v.to(device) for k, v in batch.items()}
    loss = {}
    state = None
    for attn, packed in (("eager", False), ("sdpa", True)):
        model = build_model(build_config(cfg, attn, size["mask_layers"]), device, torch.bfloat16)
        if state is None:
            state = model.state_dict()
        else:
            model.load_state_dict(state)
        trainer = SFTTrainer(model=model, args=sft_args(str(workdir / f"mask_{attn}"), device, size, packed,
                                                        gradient_checkpointing=False),
                             processing_class=tokenizer)
        model.eval()
        with torch.no_grad():
            loss[attn] = trainer.compute_loss(trainer.model, batch).item()
        del trainer, model
        free_memory()
    rel = abs(loss["sdpa"] - loss["eager"]) / abs(loss["eager"])
    table.add("masks", "ok" if rel < 1e-2 else "FAIL",
              f"packed varlen sdpa {loss['sdpa']:.5f} vs padded eager {loss['eager']:.5f} (rel {rel:.1e}, bf16)")


def check_head(table: Table, device, size: dict, cfg: dict):
    from hf_sft.training.losses import fused_linear_nll, plain_linear_nll

    n, h, v = size["head_tokens"], cfg["hidden_size"], cfg["vocab_size"]
    torch.manual_seed(0)
    hidden0 = torch.randn(n, h, device=device, dtype=torch.bfloat16)
    weight0 = (torch.randn(v, h, device=device) * 0.02).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), device=device)
    result = {}
    for name, fn in (("plain", plain_linear_nll), ("fused", fused_linear_nll)):
        hidden, weight = hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()
        peak_reset(device)
        sync(device)
        start = time.perf_counter()
        out = fn(hidden, weight, None, targets)
        out.nll_sum.backward()
        sync(device)
        result[name] = (out.nll_sum.item(), hidden.grad.float(), weight.grad.float(), time.perf_counter() - start,
                        peak_gib(device))
        del out, hidden, weight
        free_memory()
    (pn, ph, pw, pt, pm), (fn_, fh, fw, ft, fm) = result["plain"], result["fused"]
    rel_nll = abs(fn_ - pn) / abs(pn)
    rel_g = max(((fh - ph).norm() / ph.norm()).item(), ((fw - pw).norm() / pw.norm()).item())
    ok = rel_nll < 1e-3 and rel_g < 2e-2
    table.add("head", "ok" if ok else "FAIL", f"{n} tokens x {v}: nll rel {rel_nll:.1e}, grad rel {rel_g:.1e}; "
                                              f"fused {ft:.3f}s peak {fm}, plain {pt:.3f}s peak {pm}")


def check_snapshot(table: Table, device, cfg: dict):
    from hf_sft.evaluation.snapshots import SharedWeights, shm_free_bytes
    from hf_sft.generation.vllm import state_dict_for_push

    model = build_model(build_config(cfg), device, torch.float32)
    state = state_dict_for_push(model)
    _, nbytes = SharedWeights.plan(state, torch.bfloat16)
    free = shm_free_bytes()
    if free < nbytes:
        table.add("snapshot", "SKIP", f"needs {nbytes / 2**30:.2f} GiB, /dev/shm has {free / 2**30:.2f} GiB free "
                                      "(docker: --shm-size=16g or --ipc=host)")
        return
    sync(device)
    start = time.perf_counter()
    slot = SharedWeights.allocate(state, torch.bfloat16)
    slot.copy_from(state)
    first = time.perf_counter() - start
    start = time.perf_counter()
    slot.copy_from(state)
    again = time.perf_counter() - start
    table.add("snapshot", "ok", f"{nbytes / 2**20:,.1f} MiB bf16 from fp32 on {device.type}: first {first:.3f}s "
                                f"(allocate + copy), reused buffer {again:.3f}s")
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
    parser.add_argument("--only", nargs="*", help="run only these checks (gemm train masks head snapshot generate)")
    args = parser.parse_args(argv)

    if args.cpu_smoke:
        device, cfg, size = torch.device("cpu"), TINY, SIZES["smoke"]
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; run with --cpu-smoke on CPU", file=sys.stderr)
            return 2
        device, cfg, size = torch.device("cuda"), QWEN25_MATH_15B, SIZES["gpu"]
    wanted = set(args.only or ["gemm", "train", "masks", "head", "snapshot", "generate"])
    table = Table()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    import transformers

    table.add("machine", "ok", f"{name}; torch {torch.__version__}, transformers {transformers.__version__}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_sft_gpu_check_") as tmp:
        workdir = Path(tmp)
        tokenizer = build_tokenizer(workdir)
        gemm = None
        checks = [("gemm", lambda: check_gemm(table, device, size)),
                  ("train", lambda: check_training(table, device, size, cfg, tokenizer, workdir, gemm)),
                  ("masks", lambda: check_masks(table, device, size, cfg, tokenizer, workdir)),
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
