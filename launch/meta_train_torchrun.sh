#!/usr/bin/env bash
# Run: NPROC=2 bash launch/meta_train_torchrun.sh taalm_dist/configs/zero3_tiny_cpu.yaml [key.sub=value ...]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 MASTER_PORT=29500 on each node.
# One process per GPU (NPROC defaults to the number of GPUs, or 2 on a CPU-only machine, where the
# ranks use gloo with one thread each). Resumes the newest complete checkpoint if there is one.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: [NPROC=N] $0 CONFIG.yaml [key.sub=value ...]" >&2
  exit 2
fi
config="$1"
shift
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  default_nproc=$(nvidia-smi -L | wc -l)
else
  default_nproc=2
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
fi
nproc="${NPROC:-$default_nproc}"
rdzv=(--standalone)
if [[ "${NNODES:-1}" -gt 1 ]]; then
  rdzv=(--nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" \
        --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}")
fi
exec python -m torch.distributed.run "${rdzv[@]}" --nproc_per_node "$nproc" \
  -m taalm_dist.cli meta-train --config "$config" --resume auto "$@"
