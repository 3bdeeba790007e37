#!/usr/bin/env bash
# Multi-node `dc-zoo eval` on SLURM: one torchrun per node, rendezvous (c10d) on the first node.
#
#   sbatch scripts/slurm_eval.sh                                  # sd-2-base on CIFAR-10, the paper's l1 schedule
#   MODEL=dit-xl-2-256 DATASET=imagenet1k DATASET_ROOT=/data/imagenet sbatch --nodes 4 scripts/slurm_eval.sh
#   sbatch scripts/slurm_eval.sh --limit 1000                      # extra arguments go to dc-zoo eval
#
# Every GPU of every node scores its round-robin share of the dataset's chunks and appends
# crash-safe per-sample records under $OUTPUT; rank 0 merges them into clip_benchmark's result
# JSON. Preempted or timed out? Submit the same command again (or let --requeue do it): the run
# resumes where the records stop, and gives the numbers an uninterrupted run would. The records
# need a filesystem every node sees ($OUTPUT). Nodes may be added or removed between resumes.
# On preemption SLURM sends SIGTERM: every rank stores the chunk in flight, writes nothing torn
# and exits with status 143 ("stopped by SIGTERM ... re-run the same command to resume"). SLURM
# (KillWait) and torchrun send SIGKILL about 30 s later: a chunk still being scored then is
# dropped and scored again on resume (never stored torn); --signal=TERM@120 warns earlier.
#
# Without SLURM, the same rendezvous by hand (run on each of two nodes, node0 being the first):
#   torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29500 \
#       --rdzv-id my-eval -m dc_zoo.evaluation --model sd-2-base --dataset cifar10 ...
#
#SBATCH --job-name=dc-zoo-eval
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

MODEL=${MODEL:-sd-2-base}
DATASET=${DATASET:-cifar10}
DATASET_ROOT=${DATASET_ROOT:-$PWD/data/$DATASET}
OUTPUT=${OUTPUT:-$PWD/results}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
RDZV_PORT=${RDZV_PORT:-29500}
# CIFAR-10's settings in the paper: keep 5 then 1 with 50 then 500 timesteps, l1 loss.
SCHEDULE=${SCHEDULE:---n-samples 50 500 --to-keep 5 1 --loss l1}

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# Nodes without internet: weights come from the Hugging Face cache only.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

echo "dc-zoo eval: $MODEL on $DATASET, $SLURM_NNODES node(s) x $GPUS_PER_NODE GPU(s), rendezvous $head_node:$RDZV_PORT"
# shellcheck disable=SC2086  # SCHEDULE is a list of arguments
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$head_node:$RDZV_PORT" --rdzv-id "$SLURM_JOB_ID" \
    -m dc_zoo.evaluation \
    --model "$MODEL" --dataset "$DATASET" --dataset_root "$DATASET_ROOT" --output "$OUTPUT" \
    $SCHEDULE "$@"
