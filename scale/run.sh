#!/usr/bin/env bash
# One node: NGPUS processes of scale/launch.py (NGPUS=0 or no GPU: 2 CPU processes on gloo).
#   NGPUS=8 scale/run.sh pretrain --run runs/base --preset small
#   NGPUS=8 scale/run.sh grpo --init runs/base --run runs/zero
# Several nodes: set NNODES, NODE_RANK is not needed (c10d rendezvous), RDZV_ENDPOINT=host:port of
# any one node, and run this same line on every node.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NGPUS:-}" ]; then
  NGPUS=$(python -c "import torch; print(torch.cuda.device_count())")
fi
NPROC=$NGPUS
EXTRA=()
if [ "$NGPUS" -eq 0 ]; then
  NPROC=${NPROC_CPU:-2}
  EXTRA=(--device cpu)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
if [ -n "${RDZV_ENDPOINT:-}" ]; then
  LAUNCH=(--nnodes="${NNODES:-1}" --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-r1}")
else
  LAUNCH=(--standalone)
fi
# `--` ends torchrun's own options: without it torchrun 2.13 reads our --run as its --run-path
exec torchrun "${LAUNCH[@]}" --nproc-per-node="$NPROC" --max-restarts="${MAX_RESTARTS:-1}" \
  -m -- scale.launch "$@" "${EXTRA[@]}"
