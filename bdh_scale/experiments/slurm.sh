#!/bin/bash
# Multi-node training under SLURM: one srun task per node, each running `accelerate launch`, which
# starts one worker per GPU of its node. Run from the repository root:
#
#   sbatch --nodes 4 launch/slurm.sh recipes/shakespeare_m1.yaml train.max_steps=20000 train.run_name=big
#   ACCELERATE_CONFIG=launch/fsdp.yaml sbatch --nodes 2 launch/slurm.sh RECIPE train.optim=adamw
#
# Everything after the script name goes to train.py (a recipe, then section.key=value overrides).
# train.resume=auto is inserted after the recipe, so a requeued or resubmitted job continues from the newest valid
# checkpoint of runs/<run_name>; pass train.resume=null to always start fresh (later overrides win).
#
# Preemption and the time limit: SLURM sends SIGTERM (--signal below: 120 s before the limit) to the
# launchers, which forward it to their workers; the loop finishes its step, saves a checkpoint and
# exits 0. The launcher (torch elastic) kills workers that take more than 30 s after its own
# SIGTERM, so keep checkpoints small enough to write in that time (or save more often with
# train.checkpoint_every). With --requeue, a preempted job is queued again and resumes by itself.
#
# Checkpoints are written by every rank into runs/<run_name>/checkpoints: the run directory must
# be on a filesystem all nodes share.
#
#SBATCH --job-name=bdh
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
# Readable logs: Python writes each line as it comes (no block buffering into the file), and the trainer,
# seeing no terminal, prints a plain progress line every train.log_every steps instead of a bar.
export PYTHONUNBUFFERED=1

if [ "$#" -lt 1 ]; then
    echo "usage: sbatch [--nodes N] launch/slurm.sh RECIPE [section.key=value ...]" >&2
    exit 2
fi

cd "${SLURM_SUBMIT_DIR:-.}"   # sbatch runs a copy of this script: paths are relative to where it was submitted
CONFIG=${ACCELERATE_CONFIG:-launch/multi_gpu.yaml}        # DDP; launch/fsdp.yaml for FSDP
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
NUM_MACHINES=${SLURM_NNODES:-1}
NUM_PROCESSES=$((NUM_MACHINES * GPUS_PER_NODE))
# (no pipefail here: head exits after one line and scontrol may then die of SIGPIPE)
MAIN_PROCESS_IP=$(set +o pipefail; scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
if [ -z "$MAIN_PROCESS_IP" ]; then
    echo "slurm.sh: no host in SLURM_JOB_NODELIST='${SLURM_JOB_NODELIST:-}'; submit with sbatch" >&2
    exit 2
fi
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-$((20000 + SLURM_JOB_ID % 20000))}   # per job: jobs may share a node
RECIPE=$1
shift
TRAIN_ARGS=$(printf '%q ' "$RECIPE" "train.resume=auto" "$@")

echo "bdh: ${NUM_MACHINES} node(s) x ${GPUS_PER_NODE} GPU(s), main ${MAIN_PROCESS_IP}:${MAIN_PROCESS_PORT}, config ${CONFIG}"

# One task per node; SLURM_NODEID (== SLURM_PROCID with one task per node) is read inside each task.
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "
    exec accelerate launch \
        --config_file ${CONFIG} \
        --num_machines ${NUM_MACHINES} \
        --num_processes ${NUM_PROCESSES} \
        --machine_rank \${SLURM_NODEID} \
        --main_process_ip ${MAIN_PROCESS_IP} \
        --main_process_port ${MAIN_PROCESS_PORT} \
        --rdzv_backend static \
        --same_network \
        train.py ${TRAIN_ARGS}"
