#!/usr/bin/env bash
"true" r'''\'
# Meta-train φ under DeepSpeed ZeRO-3, one process per GPU. Either command works, as written:
#   deepspeed launch/meta_train.sh configs/zero3_llama2_tinyllama.yaml [key.sub=value ...]
#   bash launch/meta_train.sh configs/zero3_llama2_tinyllama.yaml [key.sub=value ...]
# This file is both a bash script and a Python file. The DeepSpeed launcher runs its script argument with
# Python, once per process (the Python part at the end); run with bash, the part below starts the launcher on
# this same file: NUM_GPUS=N processes (default: every GPU, or 2 CPU processes with gloo on a machine
# without one), HOSTFILE=path for several hosts (lines "host slots=8"; passwordless ssh), MASTER_PORT.
# Resumes the newest complete checkpoint of train.out_dir (--resume auto).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: [HOSTFILE=path] [NUM_GPUS=N] $0 CONFIG.yaml [key.sub=value ...]" >&2
  exit 2
fi
args=(--master_port "${MASTER_PORT:-29500}")
if [[ -n "${HOSTFILE:-}" ]]; then
  args+=(--hostfile "$HOSTFILE")
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  args+=(--num_gpus "${NUM_GPUS:-$(nvidia-smi -L | wc -l)}")
else
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  args+=(--num_gpus "${NUM_GPUS:-2}")
fi
exec deepspeed "${args[@]}" "$0" "$@"
: <<'#'  the Python part, for bash a here-document that is never run
'''
import sys

from taalm_dist.launch import run_verb

sys.exit(run_verb("meta-train"))
#
