#!/usr/bin/env bash
# Run: bash launch/meta_train.sh configs/zero3_llama2_tinyllama.yaml [key.sub=value ...]
# Multi-node: HOSTFILE=hostfile bash launch/meta_train.sh ...   (lines "host slots=8"; passwordless ssh)
# The DeepSpeed launcher starts one process per GPU on every host of the hostfile (or on this machine)
# and each runs `python -m taalm_dist.cli meta-train`. Resumes the newest complete checkpoint.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: [HOSTFILE=path] [NUM_GPUS=N] $0 CONFIG.yaml [key.sub=value ...]" >&2
  exit 2
fi
config="$1"
shift
args=(--no_local_rank --master_port "${MASTER_PORT:-29500}")
if [[ -n "${HOSTFILE:-}" ]]; then
  args+=(--hostfile "$HOSTFILE")
else
  args+=(--num_gpus "${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}")
fi
exec deepspeed "${args[@]}" --module taalm_dist.cli meta-train --config "$config" --resume auto "$@"
