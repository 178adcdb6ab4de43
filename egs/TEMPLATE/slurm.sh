#!/usr/bin/env bash
# Slurm example: one stage of a corpus recipe on N nodes x G GPUs. srun starts one task per node;
# each task runs the recipe (run.sh -> sitok.sh) with the same c10d rendezvous on the first node,
# so torch.distributed.run on every node joins one job of N x G processes. Copy it next to a
# corpus run.sh, adapt the #SBATCH lines, and submit from that directory:
#
#   cd egs/librispeech/sitok && sbatch --nodes 4 ../../TEMPLATE/slurm.sh --stage 4 --stop_stage 4 \
#       --tokenizer_config XL --tokenizer_args "--distributed_strategy fsdp"
#
# Every option after the script name goes to run.sh. The experiment directory (exp/) must be on
# a filesystem all nodes see: the checkpoint shards of every rank are written there. Stages
# other than 4 and 6-9 do not train: run them on one node (they ignore the node options).
#SBATCH --job-name=sitok
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

gpus_per_node=${SLURM_GPUS_ON_NODE:-8}
# the first node of the allocation hosts the rendezvous; the port is derived from the job id so
# that two jobs sharing a node do not collide
head_node=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
rdzv_port=$((29500 + SLURM_JOB_ID % 1000))

echo "job ${SLURM_JOB_ID}: ${SLURM_JOB_NUM_NODES} nodes x ${gpus_per_node} GPUs, rendezvous ${head_node}:${rdzv_port}"
# one task per node; the single quotes keep the variables for each task's own shell
# shellcheck disable=SC2016  # expanded by each task's shell, not here
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
    exec ./run.sh --ngpu "$0" --num_nodes "$1" --rdzv_endpoint "$2" --rdzv_id "$3" "${@:4}"
' "${gpus_per_node}" "${SLURM_JOB_NUM_NODES}" "${head_node}:${rdzv_port}" "sitok-${SLURM_JOB_ID}" "$@"
