"""SFT training speed and memory: hf-sft's SFTTrainer (defaults) vs TRL's SFTTrainer vs the naive loop.

Same model (random init, seeded), same data (256 traces of ../shared/data/math/sft.jsonl, tokenised
by a BPE trained on them), same examples in every optimizer step (a fixed shuffled order read
sequentially by all contenders), same loss (sum of response-token NLL / response tokens of the
step), AdamW (fused), clipping at 1.0, microbatch 8, no gradient accumulation.

    .venv/bin/python benchmarks/bench_sft.py                   # throughput + ablations + memory (a few minutes)
    .venv/bin/python benchmarks/bench_sft.py --vocab 151936    # the memory case, Qwen's vocabulary
    .venv/bin/python benchmarks/bench_sft.py --config qwen2.5-math-1.5b --device cuda --dtype bf16   # GPU, MFU
    # A real pretrained model (python -m hf_sft.import_gguf outputs/models/smollm2-135m-instruct) on GSM8K
    # traces, with the share of this machine's measured fp32 GEMM rate the training step reaches:
    .venv/bin/python benchmarks/bench_sft.py --model-dir outputs/models/smollm2-135m-instruct \
        --data ../shared/data/gsm8k/train.jsonl --num-examples 64 --no-ablations --no-memory --measure-gemm

Throughput is response tokens trained per second over whole optimizer steps (data loading,
forward, backward, clipping, optimizer, the trainers' logging), median over rounds. The contenders
are interleaved round by round so that CPU contention from other jobs hits them alike; the load
average is printed with every round.

Peak step memory is measured in a fresh subprocess per contender, on the step after a warm-up
step (so Adam's state already exists and is not counted), two ways:
  - torch: every CPU allocation and free of the c10 allocator during the step, as recorded by
    ``torch.profiler(profile_memory=True)``, summed in time order; the peak of that running sum is
    the high-water mark of tensor memory the step added. Exact for tensors; blind to memory that
    bypasses torch's allocator (oneDNN/MKL scratch, Python objects).
  - rss: the kernel's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs
    before the step) minus the resident set at the start of the step; catches everything, but
    glibc may serve an allocation from memory it kept from earlier frees, which hides it. The
    probe runs with MALLOC_MMAP_THRESHOLD_=131072 so that big blocks are returned on free and
    taken anew.
On CUDA: torch.cuda.max_memory_allocated over the step minus memory allocated at its start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "math" / "sft.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

MODEL_CONFIGS = {
    # The issue's CPU model: random-init Qwen2, hidden 256, 4 layers, head_dim 32.
    "tiny": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, rope_theta=10000.0),
    # Qwen2.5-Math-1.5B's shape (random init: nothing is downloaded).
    "qwen2.5-math-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, head_dim=128, max_position_embeddings=4096,
                              rope_theta=10000.0, vocab_size=151936),
}
PEAK_FLOPS = {"cuda": 989e12}  # H100 SXM dense bf16; override with --peak-tflops

# hf-sft variants: the default, then each optimisation switched off (or an extra one on).
HF_VARIANTS = {
    "hf-sft": {},
    "hf-sft padding_free=off": {"padding_free": False},
    "hf-sft shared_prefix=off": {"shared_prefix": False},
    "hf-sft response_only_lm_head=off": {"response_only_lm_head": False},
    "hf-sft fused_lm_head=off": {"fused_lm_head": False},
    "hf-sft all off": {"padding_free": False, "shared_prefix": False, "response_only_lm_head": False,
                       "fused_lm_head": False},
    "hf-sft +gradient_checkpointing": {"gradient_checkpointing": True},
}
MAIN = ["hf-sft", "trl", "naive"]
NAIVE_NO_ENTROPY = "naive without entropy"
# Opt-in (--compile-row): torch.compile pays only over long runs (compilation ~30 CPU-seconds here).
COMPILE_VARIANT = ("hf-sft +torch_compile", {"torch_compile": True})


# ---------------------------------------------------------------------------------------------
# Setup: data, tokenizer, model


def build_data(args, workdir: Path):
    """Tokenizer trained on the traces (or the checkpoint's own, with --model-dir), and the project's
    tokenised dataset in a fixed shuffled order. GSM8K records are formatted with the r1_zero prompt."""
    from transformers import AutoTokenizer

    from hf_sft.data.builtin_tokenizer import build_bpe_tokenizer
    from hf_sft.config import DataArguments
    from hf_sft.data.loading import prepare_train_dataset

    records = [json.loads(line) for line in args.data.open() if line.strip()]
    import random
    random.Random(args.seed).shuffle(records)
    records = records[: args.num_examples]
    subset = workdir / "traces.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in records))
    tok_dir = Path(args.model_dir) if args.model_dir else workdir / "tokenizer"
    if not tok_dir.exists():
        corpus = workdir / "corpus.txt"
        corpus.write_text("\n".join(r["prompt"] + r["response"] for r in records))
        build_bpe_tokenizer(tok_dir, [corpus], vocab_size=4096)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    prepared = prepare_train_dataset(DataArguments(train_data=str(subset), max_length=4096), tokenizer)
    return tokenizer, prepared.train


def build_model(args, vocab_size: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.model_dir:  # pretrained: every contender gets a fresh copy of the same weights
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, attn_implementation="sdpa").to(
            args.device)
    shape = dict(MODEL_CONFIGS[args.config])
    shape["vocab_size"] = args.vocab or shape.get("vocab_size") or vocab_size
    config = Qwen2Config(tie_word_embeddings=True, attn_implementation="sdpa", **shape)
    torch.manual_seed(args.seed)
    return Qwen2ForCausalLM(config).to(device=args.device, dtype=dtype)


def step_token_counts(dataset, batch_size: int) -> list[int]:
    """Response tokens of each optimizer step, in the order every contender reads the data."""
    counts = dataset["num_response_tokens"]
    return [sum(counts[i:i + batch_size]) for i in range(0, len(counts), batch_size)]


def real_token_counts(dataset, batch_size: int) -> list[int]:
    lengths = [len(x) for x in dataset["input_ids"]]
    return [sum(lengths[i:i + batch_size]) for i in range(0, len(lengths), batch_size)]


# ---------------------------------------------------------------------------------------------
# Contenders. Each is a function (model, n_steps, hooks) that trains n_steps optimizer steps on
# steps 0..n-1 of the fixed order and calls hooks.step_begin() / hooks.step_end() around each.


class Hooks:
    """Step boundaries: wall time at every step end, and (for the memory probe) a measured step."""

    def __init__(self, measure_step: int | None = None, device: str = "cpu"):
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []  # process CPU time (all threads), less sensitive to other jobs
        self.measure_step, self.device = measure_step, device
        self.memory: dict | None = None
        self._probe = None

    def step_begin(self, step: int) -> None:
        if step == self.measure_step:
            self._probe = MemoryProbe(self.device)
            self._probe.start()

    def step_end(self, step: int) -> None:
        if self._probe is not None and step == self.measure_step:
            self.memory = self._probe.stop()
            self._probe = None
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())


def common_training_args(args, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=1e-5, lr_scheduler_type="constant", max_grad_norm=1.0, optim="adamw_torch_fused",
        seed=args.seed, train_sampling_strategy="sequential", dataloader_num_workers=0, report_to="none",
        save_strategy="no", logging_steps=10_000, logging_first_step=False, disable_tqdm=True, use_cpu=args.device == "cpu",
        bf16=False, fp16=False,
    )


def quiet(trainer):
    """Without tqdm the Trainer prints every log dict; the benchmark prints its own table."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def trainer_callback(hooks: Hooks):
    from transformers import TrainerCallback

    class _Cb(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            hooks.step_begin(state.global_step)

        def on_step_end(self, a, state, control, **kw):
            hooks.step_end(state.global_step - 1)

    return _Cb()


def run_hf_sft(args, model, tokenizer, dataset, n_steps, hooks, overrides):
    from hf_sft.config import SFTConfig
    from hf_sft.core import pad_token_id
    from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(max_steps=n_steps, **common_training_args(args, out), **overrides)
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                             data_collator=PadToLongestCollator(pad_token_id(tokenizer)),
                             callbacks=[trainer_callback(hooks)])
        quiet(trainer).train()


_TRL_DATA = {}


def trl_dataset(dataset):
    """Our pre-shifted columns back to TRL's unshifted ones: full ids, labels -100 outside the response."""
    if id(dataset) in _TRL_DATA:
        return _TRL_DATA[id(dataset)]

    def convert(ex):
        ids = ex["input_ids"] + ex["labels"][-1:]
        labels = [-100] + [t if m else -100 for t, m in zip(ex["labels"], ex["response_mask"])]
        return {"input_ids": ids, "labels": labels}
    _TRL_DATA[id(dataset)] = dataset.map(convert, remove_columns=dataset.column_names, desc="TRL format")
    return _TRL_DATA[id(dataset)]


def run_trl(args, model, tokenizer, dataset, n_steps, hooks, _overrides):
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer as TRLTrainer

    with tempfile.TemporaryDirectory() as out:
        config = TRLConfig(max_steps=n_steps, max_length=None, shuffle_dataset=False, **common_training_args(args, out))
        trainer = TRLTrainer(model=model, args=config, train_dataset=trl_dataset(dataset), processing_class=tokenizer,
                             callbacks=[trainer_callback(hooks)])
        quiet(trainer).train()


def run_naive(args, model, tokenizer, dataset, n_steps, hooks, overrides):
    """The spec's loop: pad each microbatch to its longest, full logits, sft_microbatch_train_step.

    It logs what the trainers log (mean entropy over response tokens), from the spec's
    ``get_response_log_probs(return_token_entropy=True)``, which computes the entropy at every
    position of the full logits. ``overrides["entropy"] = False`` skips it (an ablation row: the
    loop without the metric, the cheapest it can be).
    """
    with_entropy = overrides.get("entropy", True)
    from hf_sft.core import get_response_log_probs, pad_token_id, sft_microbatch_train_step
    from hf_sft.training.trainer import PadToLongestCollator

    collate = PadToLongestCollator(pad_token_id(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    model.train()
    for step in range(n_steps):
        hooks.step_begin(step)
        batch = collate([dataset[i] for i in range(step * args.batch_size, (step + 1) * args.batch_size)])
        batch = {k: v.to(args.device) for k, v in batch.items()}
        mask = batch["response_mask"]
        labels = batch["labels"].clamp(min=0)
        out = get_response_log_probs(model, batch["input_ids"], labels, return_token_entropy=with_entropy)
        n_tokens = int(mask.sum())
        # normalize_constant chosen so the loss is sum(NLL) / response tokens, the trainers' loss.
        sft_microbatch_train_step(out["log_probs"], mask, 1, n_tokens / mask.shape[0])
        if with_entropy:
            _metrics = (out["token_entropy"][mask].mean().item(), n_tokens)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hooks.step_end(step)


def contender(name: str):
    if name == "trl":
        return run_trl, {}
    if name == "naive":
        return run_naive, {}
    if name == NAIVE_NO_ENTROPY:
        return run_naive, {"entropy": False}
    if name == COMPILE_VARIANT[0]:
        return run_hf_sft, COMPILE_VARIANT[1]
    return run_hf_sft, HF_VARIANTS[name]


# ---------------------------------------------------------------------------------------------
# Memory


class MemoryProbe:
    """Peak memory a step adds: torch allocator events and RSS high-water mark (CPU), or CUDA stats."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        from torch.profiler import ProfilerActivity, profile

        self.rss_ok = _reset_hwm()
        self.rss0 = _status_kb("VmRSS")
        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.prof.__enter__()

    def stop(self) -> dict:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return {"torch_peak_bytes": torch.cuda.max_memory_allocated() - self.base}
        self.prof.__exit__(None, None, None)
        rss_peak = (_status_kb("VmHWM") - self.rss0) * 1024 if self.rss_ok else None
        events = [e for e in self.prof.profiler.kineto_results.events() if e.name() == "[memory]"
                  and e.device_type() == torch.autograd.DeviceType.CPU]
        live = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            live += e.nbytes()
            peak = max(peak, live)
        return {"torch_peak_bytes": peak, "rss_peak_bytes": rss_peak}


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def memory_probe(args, name: str) -> dict:
    """Run in a fresh process: one warm-up step, then the measured step."""
    workdir = Path(args.workdir)
    tokenizer, dataset = build_data(args, workdir)
    model = build_model(args, len(tokenizer))
    fn, overrides = contender(name)
    hooks = Hooks(measure_step=1, device=args.device)
    fn(args, model, tokenizer, dataset, 2, hooks, overrides)
    return hooks.memory


def measure_memory(args, names: list[str]) -> dict[str, dict]:
    results = {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    for name in names:
        cmd = [sys.executable, __file__, "--memory-probe", name, "--workdir", args.workdir,
               "--config", args.config, "--device", args.device, "--dtype", args.dtype, "--data", str(args.data),
               "--num-examples", str(args.num_examples), "--batch-size", str(args.batch_size),
               "--seed", str(args.seed)]
        if args.vocab:
            cmd += ["--vocab", str(args.vocab)]
        if args.model_dir:
            cmd += ["--model-dir", str(args.model_dir)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("MEMORY ")]
        if proc.returncode != 0 or not line:
            print(f"  memory probe {name} failed:\n{proc.stderr[-2000:]}")
            continue
        results[name] = json.loads(line[-1][len("MEMORY "):])
        m = results[name]
        rss = f"{m['rss_peak_bytes'] / 2**30:6.2f} GiB" if m.get("rss_peak_bytes") is not None else "   n/a"
        print(f"  {name:34s} torch {m['torch_peak_bytes'] / 2**30:6.2f} GiB   rss {rss}", flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# FLOPs / MFU


def flops_per_token(config, seq_len: float) -> float:
    """Training FLOPs per processed token: 6 x parameters in matmuls + attention scores/values.

    Parameters: every linear layer of the body plus the LM head (the embedding lookup is not a
    matmul; with tied embeddings the matrix is counted once, as the head). Attention: 2 matmuls of
    head_dim x heads per key, times 3 for forward and backward, at the average causal context of
    seq_len / 2.
    """
    h, L, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    params = L * per_layer + config.vocab_size * h
    attention = 3 * 2 * 2 * L * q * (seq_len / 2)
    return 6 * params + attention


def measure_gemm_flops(device: str, dtype: torch.dtype, shapes, repeats: int = 10) -> dict[str, float]:
    """FLOP/s of torch.mm on this machine (same threads as the training step), median of ``repeats``.

    The reference for CPUs, which have no datasheet peak that a shared, throttled 2-core VM reaches:
    the rate the BLAS itself sustains on matrices of the model's shapes.
    """
    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n / statistics.median(times)
    return rates


# ---------------------------------------------------------------------------------------------


def run_round(args, names, models, tokenizer, dataset, n_steps) -> tuple[dict[str, float], dict[str, float]]:
    """One pass over the contenders: response tokens per wall second and per CPU second after warm-up."""
    counts = step_token_counts(dataset, args.batch_size)
    out, out_cpu = {}, {}
    for name in names:
        fn, overrides = contender(name)
        hooks = Hooks()
        start = time.perf_counter()
        start_cpu = time.process_time()
        fn(args, models[name], tokenizer, dataset, n_steps, hooks, overrides)
        if args.device == "cuda":
            torch.cuda.synchronize()
        tokens = sum(counts[args.warmup:n_steps])
        ends = hooks.ends[args.warmup - 1:] if args.warmup else [start] + hooks.ends
        cpu_ends = hooks.cpu_ends[args.warmup - 1:] if args.warmup else [start_cpu] + hooks.cpu_ends
        out[name] = tokens / (ends[-1] - ends[0])
        out_cpu[name] = tokens / (cpu_ends[-1] - cpu_ends[0])
    return out, out_cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--num-examples", type=int, default=256)
    p.add_argument("--config", choices=sorted(MODEL_CONFIGS), default="tiny")
    p.add_argument("--vocab", type=int, default=None, help="model vocabulary (default: the tokenizer's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="measured optimizer steps per contender per round")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps before them")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-ablations", action="store_true", help="only the three main contenders")
    p.add_argument("--compile-row", action="store_true", help="add hf-sft with torch_compile (slow to start)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--contenders", default=None, help="comma-separated subset of contender names")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (cuda default 989)")
    p.add_argument("--model-dir", default=None, help="a pretrained checkpoint (weights and tokenizer) instead of "
                   "--config's random init, e.g. outputs/models/smollm2-135m-instruct")
    p.add_argument("--measure-gemm", action="store_true", help="measure torch.mm's FLOP/s here (model shapes) and "
                   "report the training step's model FLOP/s as a share of it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix="bench_sft_")
    # Before anything imports `datasets`, which reads its cache location once.
    os.environ["HF_DATASETS_CACHE"] = str(Path(args.workdir) / "datasets")
    if args.memory_probe:
        import transformers
        transformers.utils.logging.set_verbosity_error()
        print("MEMORY " + json.dumps(memory_probe(args, args.memory_probe)))
        return 0
    if not args.data.exists():
        print(f"skipped: no data file at {args.data} (the benchmark trains on real SFT traces)")
        return 0
    if args.device == "cpu":  # every CPU figure below is relative to this machine
        from machine import describe, summary

        machine = describe()
        print(summary(machine), flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda but no CUDA device is available")
        return 0
    import transformers
    transformers.utils.logging.set_verbosity_error()

    names = list(MAIN) if args.no_ablations else MAIN + [NAIVE_NO_ENTROPY] + [n for n in HF_VARIANTS if n != "hf-sft"]
    if args.compile_row:
        names.append(COMPILE_VARIANT[0])
    if args.contenders:
        names = [n.strip() for n in args.contenders.split(",")]
    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        if "trl" in names and not args.contenders:  # the full comparison needs it; a chosen subset may not
            print("skipped: TRL is not installed (pip install -e '.[bench]'); --contenders hf-sft,naive runs "
                  "without it")
            return 0
        if "trl" in names:
            print("error: --contenders names trl, which is not installed (pip install -e '.[bench]')")
            return 2
        trl_version = "not installed"
    tokenizer, dataset = build_data(args, Path(args.workdir))
    counts = step_token_counts(dataset, args.batch_size)
    n_steps = args.warmup + args.steps
    lengths = [len(x) for x in dataset["input_ids"]]
    padded = sum(max(lengths[i:i + args.batch_size]) * len(lengths[i:i + args.batch_size])
                 for i in range(0, n_steps * args.batch_size, args.batch_size))
    real = sum(lengths[: n_steps * args.batch_size])
    sample_model = build_model(args, len(tokenizer))
    cfg = sample_model.config
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_version}; "
          f"device {args.device} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads), {args.dtype}")
    print(f"model {args.model_dir or args.config}: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
          f"vocab {cfg.vocab_size}, {sample_model.num_parameters() / 1e6:.1f}M parameters")
    print(f"data: {len(dataset)} traces of {args.data.name}, tokenizer vocab {len(tokenizer)}; batch {args.batch_size}; "
          f"padding {1 - real / padded:.0%} of padded positions, response {sum(counts[:n_steps]) / real:.0%} of real "
          f"tokens (first {n_steps} steps)")
    if not args.no_throughput:
        print(f"throughput: {args.warmup} warm-up + {args.steps} measured steps per contender per round, "
              f"{args.rounds} rounds; {sum(counts[args.warmup:n_steps])} response tokens per measurement")
    del sample_model

    results = {"args": {k: str(v) for k, v in vars(args).items()}, "throughput": {}, "memory": {}}
    if args.device == "cpu":
        results["machine"] = machine
    if not args.no_throughput:
        models = {name: build_model(args, len(tokenizer)) for name in names}
        per_round = {name: [] for name in names}
        per_round_cpu = {name: [] for name in names}
        for r in range(args.rounds):
            load0 = os.getloadavg()[0]
            res, res_cpu = run_round(args, names, models, tokenizer, dataset, n_steps)
            load1 = os.getloadavg()[0]
            for name, v in res.items():
                per_round[name].append(v)
                per_round_cpu[name].append(res_cpu[name])
            print(f"round {r + 1}: load average {load0:.1f} -> {load1:.1f}; "
                  + ", ".join(f"{n} {v:.0f}" for n, v in res.items()), flush=True)
        med = {n: statistics.median(v) for n, v in per_round.items()}
        med_cpu = {n: statistics.median(v) for n, v in per_round_cpu.items()}
        results["throughput"] = {"median": med, "rounds": per_round, "median_per_cpu_s": med_cpu,
                                 "rounds_per_cpu_s": per_round_cpu}
        for title, table, rounds in (("response tokens / wall second", med, per_round),
                                     ("response tokens / CPU second of this process (all threads)", med_cpu,
                                      per_round_cpu)):
            print(f"\n{title} (median of rounds) [each round]")
            for n in names:
                extra = ""
                if "naive" in table and n != "naive":
                    extra += f"   x{table[n] / table['naive']:.2f} naive"
                if "trl" in table and n != "trl":
                    extra += f"   x{table[n] / table['trl']:.2f} TRL"
                print(f"  {n:34s} {table[n]:8.0f}   [{', '.join(f'{v:.0f}' for v in rounds[n])}]{extra}")
            if "hf-sft" in table and NAIVE_NO_ENTROPY in table:
                print(f"  hf-sft / {NAIVE_NO_ENTROPY}: x{table['hf-sft'] / table[NAIVE_NO_ENTROPY]:.2f}")
        if args.measure_gemm:
            dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
            h, inter = cfg.hidden_size, cfg.intermediate_size
            tokens = args.batch_size * 128
            shapes = [(tokens, h, inter), (tokens, inter, h), (tokens, h, h), (2048, 2048, 2048)]
            gemm = measure_gemm_flops(args.device, dtype, shapes)
            print("\nmeasured torch.mm rate (median of 10): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s"
                                                                        for k, v in gemm.items()))
            results["gemm_flops"] = gemm
            args.peak_tflops = max(gemm.values()) / 1e12
        if args.device == "cuda" or args.peak_tflops:
            peak = (args.peak_tflops * 1e12) if args.peak_tflops else PEAK_FLOPS["cuda"]
            avg_len = real / (n_steps * args.batch_size)
            fpt = flops_per_token(cfg, avg_len)
            real_per_resp = real / sum(counts[:n_steps])
            print(f"\nmodel FLOPs per processed token {fpt / 1e9:.2f} G (6N + attention at mean length "
                  f"{avg_len:.0f}); per trained (response) token {fpt * real_per_resp / 1e9:.2f} G; peak "
                  f"{peak / 1e9:.0f} GFLOP/s")
            for n in names:
                mfu = med[n] * real_per_resp * fpt / peak
                print(f"  {'share of measured GEMM rate' if args.measure_gemm else 'MFU'} {n:30s} {100 * mfu:5.1f}%")
            results["flops_per_token"] = fpt
        del models

    if not args.no_memory:
        print(f"\npeak memory added by one training step (vocab {cfg.vocab_size}, microbatch {args.batch_size}); "
              "fresh process per contender")
        mem = measure_memory(args, names)
        results["memory"] = mem
        key = "torch_peak_bytes"
        for ref in ("naive", "trl"):
            if ref in mem and "hf-sft" in mem:
                print(f"  hf-sft / {ref}: torch {mem['hf-sft'][key] / mem[ref][key]:.2f}"
                      + (f", rss {mem['hf-sft']['rss_peak_bytes'] / mem[ref]['rss_peak_bytes']:.2f}"
                         if mem[ref].get("rss_peak_bytes") else ""))
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
