# Sourced by the launch scripts' bash part (launch/meta_train.sh, ckl_run.sh, learn.sh) as
#   source "$(dirname "$0")/deepspeed_self.bash" "USAGE ARGS" "$@"
# Starts the DeepSpeed launcher on the calling script itself ($0): NUM_GPUS=N processes (default: every GPU, or
# 2 CPU processes with gloo on a machine without one), HOSTFILE=path for several hosts (lines "host slots=8";
# passwordless ssh), MASTER_PORT (default 29500). Never returns (exec), except with a usage error (exit 2).
set -euo pipefail
usage=$1
shift
if [[ $# -lt 1 ]]; then
  echo "usage: [HOSTFILE=path] [NUM_GPUS=N] $0 $usage" >&2
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
