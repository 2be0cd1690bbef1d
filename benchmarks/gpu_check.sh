#!/usr/bin/env bash
# The GPU check: one command, one table (benchmarks/gpu_check.py says what each row measures).
#
#   bash benchmarks/gpu_check.sh                       # one H100/H200; torch, transformers, accelerate; < 8 min
#   bash benchmarks/gpu_check.sh --out table.md        # also write the markdown table
#   bash benchmarks/gpu_check.sh --cpu-smoke           # the same code paths on a tiny model on CPU (seconds)
#
# Python: $PYTHON, else .venv/bin/python when present, else python3. A hard limit of 470 s (GPU) keeps
# the whole check inside an 8-minute device slot; a check that fails prints FAIL and the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || true
"$python" benchmarks/gpu_isolation_check.py || echo "FAIL gpu_isolation_check (issue 18: training GPU hidden before CUDA starts)"
exec timeout --signal=TERM --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-470}" "$python" benchmarks/gpu_check.py "$@"
