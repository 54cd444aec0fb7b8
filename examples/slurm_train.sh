#!/bin/bash
# Train with diffspace on several nodes under SLURM: one torchrun agent per node, which starts one
# process per GPU; the agents meet through c10d rendezvous on the job's first node.
#
#   sbatch examples/slurm_train.sh configs/my_run.toml            # a new run
#   sbatch examples/slurm_train.sh runs/my_run --resume           # continue it (any node count)
#
# Anything after the config is passed to `diffspace train` (e.g. --set train.minutes=230 to stop
# cleanly, with a checkpoint, before the job's time limit). train.batch_size is the GLOBAL batch: it
# must divide by nodes x GPUs per node x --accumulate. The run directory must be on a filesystem
# that every node sees (rank 0 writes it; every rank reads the checkpoint on --resume).
#
#SBATCH --job-name=diffspace
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch $0 CONFIG.toml|RUN_DIR [diffspace train options]" >&2
    exit 2
fi

source "${DIFFSPACE_VENV:-.venv}/bin/activate"

gpus_per_node=${SLURM_GPUS_ON_NODE:-8}
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# why: each process gets its share of the node's cores instead of all of them
threads=$(( ${SLURM_CPUS_PER_TASK:-$gpus_per_node} / gpus_per_node ))
export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))

srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_JOB_NUM_NODES" \
    --nproc-per-node "$gpus_per_node" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$head_node:29500" \
    -m diffspace train "$@" --no-progress
