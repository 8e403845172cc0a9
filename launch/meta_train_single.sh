#!/usr/bin/env bash
# Run: bash launch/meta_train_single.sh taalm_dist/configs/meta_train_tiny.yaml [key.sub=value ...]
# Single-process meta-training of φ (one GPU or CPU, no DeepSpeed). Overrides follow the config path. Resumes the
# newest complete checkpoint of train.out_dir (--resume auto), so a rerun or requeue continues the run.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG.yaml [key.sub=value ...]" >&2
  exit 2
fi
config="$1"
shift
exec taalm meta-train --config "$config" --resume auto "$@"
