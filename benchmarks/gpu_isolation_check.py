"""Why the training GPU is hidden before CUDA starts, shown on a real GPU; then the run's UUID check.

    python benchmarks/gpu_isolation_check.py        # any CUDA machine, one GPU is enough; a few seconds

1. Too late: a fresh process initialises the CUDA runtime (``torch.cuda.is_available()`` without
   ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` is ``cudaGetDeviceCount`` -> ``cuInit``), THEN sets
   ``CUDA_VISIBLE_DEVICES=-1`` to hide every GPU. NVML's count (what ``torch.cuda.device_count()`` and so
   transformers' ``n_gpu`` read before ``torch.cuda.init``) follows the variable and says 0, but the runtime
   read it once already: a tensor still lands on the GPU. That split is issue 18's bug.
2. In time: a fresh process sets the variable first: the runtime sees no GPU.
3. hf-sft's order: ``isolate_training_gpus`` (NVML only), then the device setup of ``TrainingArguments``, then
   ``check_training_gpu``, which compares the runtime's GPU UUID with NVML's for the intended GPU and prints
   the log line a training run prints.

Each step runs in its own child process (a clean CUDA state). On a machine without CUDA it says it skipped
and exits 0. Exit 1 if an observation is not the expected one. Needs torch, transformers, accelerate; no vLLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOO_LATE = """
import json, os, torch
assert torch.cuda.is_available()            # cudaGetDeviceCount -> cuInit: the runtime reads CUDA_VISIBLE_DEVICES now
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"   # hide every GPU, too late
nvml = torch.cuda.device_count()            # before torch.cuda.init: NVML, which re-reads the variable
x = torch.ones(1, device="cuda")            # the runtime kept the GPU
print(json.dumps({"nvml_count": nvml, "runtime_count": torch._C._cuda_getDeviceCount(),
                  "tensor_on": str(x.device), "uuid": str(torch.cuda.get_device_properties(0).uuid)}))
"""

IN_TIME = """
import json, os
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"   # before anything touches CUDA
import torch
print(json.dumps({"available": torch.cuda.is_available(), "runtime_count": torch._C._cuda_getDeviceCount()}))
"""

HF_SFT_ORDER = """
import json, logging, sys
sys.path.insert(0, {root!r})
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("hf_sft").setLevel(logging.INFO)
from hf_sft.config import parse_recipe
from hf_sft.training.devices import check_training_gpu, isolate_training_gpus
*_, training_args = parse_recipe([{recipe!r}, "--output_dir", {out!r}, "--eval_device", {eval_device!r}],
                                 before_training_args=lambda m, d, e: isolate_training_gpus(e))
print(json.dumps({{"line": check_training_gpu(training_args.device), "device": str(training_args.device),
                   "n_gpu": training_args.n_gpu}}))
"""


def _child(code: str, env=None) -> dict:
    run_env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "PYTORCH_NVML_BASED_CUDA_CHECK")}
    run_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=300,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    sys.stderr.write("".join(line + "\n" for line in proc.stderr.splitlines() if "hf_sft" in line))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    import torch

    count = torch.cuda.device_count() if torch.cuda._is_compiled() else 0  # NVML: no CUDA initialised here
    if count <= 0:
        print("gpu_isolation_check: skipped (no CUDA device: "
              f"{'a CPU build of torch' if not torch.cuda._is_compiled() else 'CUDA build, no GPU visible'})")
        return 0
    ok = True
    late = _child(TOO_LATE)
    still_visible = late["nvml_count"] == 0 and late["runtime_count"] >= 1 and late["tensor_on"].startswith("cuda")
    print(f"1. CUDA initialised, then CUDA_VISIBLE_DEVICES=-1: NVML count {late['nvml_count']}, runtime count "
          f"{late['runtime_count']}, tensor on {late['tensor_on']} (GPU {late['uuid']}) -> "
          f"{'still visible, as expected: hiding after initialisation does nothing' if still_visible else 'UNEXPECTED'}")
    ok &= still_visible
    early = _child(IN_TIME)
    hidden = not early["available"] and early["runtime_count"] == 0
    print(f"2. CUDA_VISIBLE_DEVICES=-1 before CUDA starts: available {early['available']}, runtime count "
          f"{early['runtime_count']} -> {'hidden, as expected' if hidden else 'UNEXPECTED'}")
    ok &= hidden
    recipe, eval_device = ("recipes/full_1gpu.yaml", "same") if count == 1 else ("recipes/full.yaml", "cuda:1")
    with tempfile.TemporaryDirectory() as out:
        fixed = _child(HF_SFT_ORDER.format(root=ROOT, recipe=recipe, out=out, eval_device=eval_device))
    checked = fixed["line"] is not None and "checked against NVML" in fixed["line"] and fixed["n_gpu"] == 1
    print(f"3. hf-sft ({recipe}, eval_device {eval_device}, {count} GPU(s)): device {fixed['device']}, n_gpu "
          f"{fixed['n_gpu']}\n   GPU assignment: {fixed['line']}\n   -> {'UUID checked' if checked else 'NOT CHECKED'}")
    ok &= checked
    print(f"gpu_isolation_check: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
