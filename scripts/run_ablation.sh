#!/usr/bin/env bash
# Run recipes one after another, continue past failures, then build the cross-run plot and table.
#   scripts/run_ablation.sh recipes/sft_128.yaml recipes/sft_256.yaml ... [-- --key value ...]
#   HF_SFT_LAUNCHER="accelerate launch --config_file accelerate_config.yaml hf_sft/train.py" scripts/run_ablation.sh ...
# Exits non-zero when any run failed (the failed recipes are listed). Run from the repository root:
# recipe paths (train_data, output_dir) are relative to it. See hf_sft/ablation.py.
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 RECIPE.yaml... [-- --key value ...]" >&2
  exit 2
fi
PYTHON="${PYTHON:-python}"
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
  PYTHON=.venv/bin/python
fi
exec "$PYTHON" -m hf_sft.ablation "$@"
