#!/usr/bin/env bash
# The CPU twin of the MATH ablation, in one command (12 minutes on 2 idle AMD EPYC cores, measured 2026-12-01):
#   scripts/run_demo_ablation.sh
# 1. noisy demo traces: the builtin addition traces with 20% wrong answers and 10% unclosed answers
#    (hf_sft/noisy_traces.py), like distilled traces that are partly wrong;
# 2. their filtered copy (python -m hf_sft.filter), statistics beside it;
# 3. the six recipes of recipes/demo_ablation/, then the comparison in outputs/demo_ablation/comparison/.
# Extra arguments go to every training run, e.g. scripts/run_demo_ablation.sh -- --max_steps 20
set -euo pipefail
cd "$(dirname "$0")/.."

# On a machine shared with other jobs, OMP_NUM_THREADS=1 helps: OpenMP threads spin-waiting for a busy
# core made a demo step several times slower under load here; on idle cores the default is faster
# (a demo step of batch 16: 0.28 s with 2 threads, 0.36 s with 1, on 2 idle AMD EPYC cores).
PYTHON="${PYTHON:-python}"
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
  PYTHON=.venv/bin/python
fi
DATA=outputs/demo_ablation/data
mkdir -p "$DATA"
if [[ ! -s "$DATA/addition_noisy.jsonl" ]]; then
  "$PYTHON" -m hf_sft.noisy_traces builtin:addition/train "$DATA/addition_noisy.jsonl" --wrong 0.2 --format 0.1 --seed 0
fi
if [[ ! -s "$DATA/addition_noisy_filtered.jsonl" ]]; then
  "$PYTHON" -m hf_sft.filter "$DATA/addition_noisy.jsonl" "$DATA/addition_noisy_filtered.jsonl"
fi
extra=()
if [[ "${1:-}" == "--" ]]; then
  extra=("$@")
fi
recipes=()
for name in n128 n256 n512 n1024 full filtered; do
  recipes+=("recipes/demo_ablation/$name.yaml")
done
exec "$PYTHON" -m hf_sft.ablation "${recipes[@]}" "${extra[@]}"
