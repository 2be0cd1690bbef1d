#!/usr/bin/env bash
# One MATH SFT experiment on one node with 2 GPUs (GPU 0 trains, GPU 1 evaluates), surviving preemption.
#
#   sbatch scripts/run_sft_slurm.sh 512        # SIZE: 128 | 256 | 512 | 1024 -> recipes/sft_SIZE.yaml
#   sbatch scripts/run_sft_slurm.sh full       #       full | filtered        -> recipes/SIZE.yaml
#   sbatch scripts/run_sft_slurm.sh 512 --learning_rate 1e-5     # further arguments go to the recipe
#   sbatch scripts/run_sft_slurm.sh recipes/other.yaml            # or any recipe file
#
# Submit from the repository root (the job runs in $SLURM_SUBMIT_DIR; recipe paths are relative to it).
# HF_SFT_ACCELERATE_CONFIG names another accelerate config (default: accelerate_config.yaml, 1 training
# GPU + 1 eval GPU), e.g. recipes/accelerate_configs/multi_gpu_eval_last.yaml with --gres=gpu:4.
# Time limit and preemption: --signal=B:TERM@300 makes Slurm send SIGTERM to this script 5 minutes
# before the limit. The script forwards it to the training process group; the trainer saves a checkpoint
# at the next step boundary and exits (hf_sft/training/preemption.py); the script then requeues the job, which
# starts again with --resume_from_checkpoint auto from that checkpoint. A preemption by the scheduler
# (SIGTERM to every process, then SIGKILL after KillWait) takes the same path. Raise the 300 s if saving
# a checkpoint takes longer on your filesystem.
# Multi-GPU configs run torch-elastic's agent inside `accelerate launch`: on SIGTERM it SIGTERMs the ranks
# and SIGKILLs them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT (torch/distributed/launcher/api.py; default 30 s,
# too short to finish a step and write a 1.5B checkpoint with fp32 optimizer state). The script sets it
# to 270 s, inside the 300 s above. The ranks agree on the stop step (hf_sft/training/preemption.py), so a
# signal that reaches one rank first cannot hang the others. A scheduler preemption is bounded by
# Slurm's KillWait instead, which the script cannot extend.
#
#SBATCH --job-name=hf-sft
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:2
#SBATCH --cpus-per-task=16
#SBATCH --mem=128G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -uo pipefail

size="${1:?usage: sbatch scripts/run_sft_slurm.sh SIZE [--key value ...]  (SIZE: 128 256 512 1024 full filtered)}"
shift
case "$size" in
  *.yaml) recipe="$size" ;;
  full | filtered) recipe="recipes/${size}.yaml" ;;
  *) recipe="recipes/sft_${size}.yaml" ;;
esac

cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
if [[ ! -f hf_sft/train.py || ! -f "$recipe" ]]; then
  echo "error: run from the hf-sft repository root; $recipe or hf_sft/train.py not found in $PWD" >&2
  exit 1
fi
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

echo "[$(date -Is)] job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0} on $(hostname): $recipe $*"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || true

export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-270}"
preempted=0
pgid=""
# shellcheck disable=SC2317  # invoked by the trap below, which shellcheck 0.9 does not follow
on_term() {
  preempted=1
  echo "[$(date -Is)] SIGTERM: asking the trainer to save a checkpoint and stop"
  # The whole process group: `accelerate launch` does not forward signals to the trainer it started.
  if [[ -n "$pgid" ]]; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
  fi
}
trap on_term TERM USR1

# setsid: the launcher and the trainer get a process group of their own, whose id is the launcher's pid.
setsid accelerate launch --config_file "${HF_SFT_ACCELERATE_CONFIG:-accelerate_config.yaml}" hf_sft/train.py "$recipe" \
  --resume_from_checkpoint auto "$@" &
pgid=$!
wait "$pgid"
status=$?
# `wait` returns early when the trap runs, and the launcher may die before the trainer has saved:
# wait until no process of the group is left (checked every second: the job's 300 s signal budget is for saving).
while kill -0 -- "-$pgid" 2>/dev/null; do
  sleep 1
done
if [[ $preempted -eq 1 ]]; then
  # $status is the interrupted wait's (or the launcher's, killed by our SIGTERM): the checkpoint counts.
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    echo "[$(date -Is)] requeueing job $SLURM_JOB_ID; it resumes from the newest complete checkpoint"
    scontrol requeue "$SLURM_JOB_ID" || echo "warning: scontrol requeue failed (already requeued by a preemption?)"
  fi
  exit 0
fi
echo "[$(date -Is)] training exited with status $status"
exit "$status"
